"""``janus``: the operator's command line (API keys, bring-your-own-key, usage).

    janus keys create --user U --plan P [--name N]
    janus keys list [--user U]
    janus keys revoke <id-or-prefix>
    janus byok set --user U --provider P --key-env VAR     (the key is read from $VAR, never argv)
    janus byok delete --user U --provider P
    janus byok genkey                                        (a fresh JANUS_BYOK_KEY)
    janus usage --user U [--plan P]
    janus backup --out FILE                                  (budgets, keys, BYOK, ledger: JSON lines)
    janus restore --in FILE                                  (into a fresh JetStream)

Connects to ``JANUS_NATS_URL`` (default nats://127.0.0.1:4222). Exit status: 0 ok, 1 failed,
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence

import structlog

from services import backup
from services.settings import KNOWN, CliSettings
from shared import contract, subjects
from shared.apikeys import KeyStore
from shared.bus import Bus
from shared.byok import ByokStore, Sealer, generate_key
from shared.catalog import ConfigError, load_plans
from shared.errors import JanusError
from shared.settings import load_settings, unknown_variables, variable


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janus", description="Janus operator commands")
    sub = p.add_subparsers(dest="group", required=True)

    keys = sub.add_parser("keys", help="issued API keys").add_subparsers(dest="cmd", required=True)
    c = keys.add_parser("create", help="issue a key (printed once)")
    c.add_argument("--user", required=True)
    c.add_argument("--plan", required=True)
    c.add_argument("--name", default="")
    ls = keys.add_parser("list", help="list keys (never the keys themselves)")
    ls.add_argument("--user")
    r = keys.add_parser("revoke", help="revoke a key by id, id prefix, or the key itself")
    r.add_argument("ref")

    byok = sub.add_parser("byok", help="users' own provider keys").add_subparsers(dest="cmd", required=True)
    s = byok.add_parser("set", help="store a user's provider key, read from an environment variable")
    s.add_argument("--user", required=True)
    s.add_argument("--provider", required=True)
    s.add_argument("--key-env", required=True, metavar="VAR")
    d = byok.add_parser("delete", help="forget a user's provider key")
    d.add_argument("--user", required=True)
    d.add_argument("--provider", required=True)
    byok.add_parser("genkey", help="print a fresh JANUS_BYOK_KEY")

    u = sub.add_parser("usage", help="a user's budget pools and this week's usage")
    u.add_argument("--user", required=True)
    u.add_argument("--plan", default="")

    b = sub.add_parser("backup", help="write every budget, key, BYOK entry and ledger message to a file")
    b.add_argument("--out", required=True, metavar="FILE")
    rs = sub.add_parser("restore", help="put a backup into a fresh JetStream")
    rs.add_argument("--in", dest="src", required=True, metavar="FILE")
    return p


async def _run(args: argparse.Namespace, settings: CliSettings) -> int:
    replicas = settings.nats_replicas
    bus = await Bus.connect(
        settings.nats_url,
        "cli",
        identity="operator",
        nkey_file=settings.nats_nkey_file,
        ca_file=settings.nats_ca_file,
    )
    try:
        if args.group == "keys":
            store = await KeyStore.open(bus, replicas)
            if args.cmd == "create":
                if load_plans(settings.plans or None).get(args.plan) is None:
                    print(f"janus: unknown plan {args.plan!r}", file=sys.stderr)
                    return 2
                key, rec = await store.create(args.user, args.plan, args.name)
                print(key)
                print(
                    f"id {rec.id}  user {rec.user}  plan {rec.plan}  (the key is shown only this once)",
                    file=sys.stderr,
                )
            elif args.cmd == "list":
                rows = await store.list(args.user)
                print(f"{'ID':<17}{'USER':<24}{'PLAN':<12}{'NAME':<20}{'CREATED':<22}REVOKED")
                for k in rows:
                    print(
                        f"{k.id:<17}{k.user:<24}{k.plan:<12}{k.name:<20}{_when(k.created):<22}"
                        f"{_when(k.revoked)}"
                    )
            else:
                rec = await store.revoke(args.ref)
                print(f"revoked {rec.id} ({rec.user})")
        elif args.group == "byok":
            store_b = await ByokStore.open(bus, Sealer.from_key(settings.byok_key), replicas)
            if args.cmd == "set":
                secret = variable(args.key_env)
                if not secret:
                    print(f"janus: ${args.key_env} is empty or not set", file=sys.stderr)
                    return 2
                await store_b.set(args.user, args.provider, secret)
                print(f"stored {args.provider} key for {args.user}")
            else:
                found = await store_b.delete(args.user, args.provider)
                print(f"deleted {args.provider} key for {args.user}" if found else "no such key")
                return 0 if found else 1
        elif args.group == "backup":
            # a one-shot command: no other task shares this loop, so a blocking open costs nothing
            with open(args.out, "w", encoding="utf-8") as out:  # noqa: ASYNC230
                counts = await backup.backup(bus, out)
            print(json.dumps(counts), file=sys.stderr)
        elif args.group == "restore":
            with open(args.src, encoding="utf-8") as src:  # noqa: ASYNC230
                counts = await backup.restore(bus, src, replicas)
            print(json.dumps(counts), file=sys.stderr)
        else:
            plan = args.plan or load_plans(settings.plans or None).default_plan
            raw = await bus.request(
                subjects.METER_USAGE, contract.encode(contract.UsageQuery(args.user, plan)), timeout=5
            )
            reply = contract.usage_reply_decoder.decode(raw)
            if isinstance(reply, contract.ErrorReply):
                raise reply.exception()
            print(json.dumps(json.loads(reply.body), indent=2))
        return 0
    finally:
        await bus.close()


def _quiet_logs() -> None:
    # stdout carries the command's answer (a new key, a table); the bus's logs go to stderr
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_logs()
    if args.group == "byok" and args.cmd == "genkey":
        print(generate_key())
        return 0
    try:
        settings = load_settings(CliSettings)
        for name, closest in unknown_variables(KNOWN):
            hint = f" (did you mean {closest}?)" if closest else ""
            print(f"janus: warning: {name} is not a Janus setting{hint}", file=sys.stderr)
        return asyncio.run(_run(args, settings))
    except ConfigError as exc:
        print(f"janus: {exc}", file=sys.stderr)
        return 2
    except (JanusError, ValueError) as exc:
        print(f"janus: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
