"""NATS identities and permissions, rendered from ``config/nats-permissions.yaml``.

    config/nats-permissions.yaml --load_identities--> {identity: Permissions}
                                 --authorization(keys)--> the ``authorization { users = [...] }`` block
    generate_keys(dir) --> one NKey seed file per identity (0600) and its public key

The same block serves every NATS server Janus runs: the local stack and the tests (public keys of
freshly generated seeds), docker compose and Kubernetes (``$JANUS_NKEY_<IDENTITY>`` variables the
server reads from its environment, filled from a Secret). Clients set their inbox prefix to
``shared.subjects.inbox_prefix(identity)``; the block grants each identity only its own.

    python -m tools.natsauth keys DIR       write a seed per identity into DIR (<identity>.nk) and the
                                            public keys (DIR/public.env, <identity>=<key>)
    python -m tools.natsauth compose DIR    the same, plus the servers' variables (DIR/nkeys.env)
                                            and a CA and server certificate for `nats` (DIR/tls/):
                                            what docker-compose.yml mounts (`make compose-keys`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import nkeys
import yaml

from shared import subjects

ROOT = Path(__file__).resolve().parent.parent
PERMISSIONS = ROOT / "config" / "nats-permissions.yaml"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: dict[str, object] | None  # NATS allow_responses: {max, expires}, or none


def load_identities(path: Path = PERMISSIONS) -> dict[str, Permissions]:
    doc = yaml.safe_load(path.read_text())
    out: dict[str, Permissions] = {}
    for name, spec in (doc.get("identities") or {}).items():
        subjects.token(name)
        unknown = set(spec) - {"publish", "subscribe", "responses"}
        if unknown:
            raise ValueError(f"{path.name}: identity {name}: unknown fields {sorted(unknown)}")
        out[name] = Permissions(
            tuple(spec.get("publish") or ()), tuple(spec.get("subscribe") or ()), spec.get("responses")
        )
    return out


def env_name(identity: str) -> str:
    """The server-side variable carrying an identity's public key in compose and Kubernetes."""
    return f"JANUS_NKEY_{identity.upper()}"


def _user(nkey: str, perms: Permissions, identity: str) -> dict[str, object]:
    inbox = f"{subjects.inbox_prefix(identity)}.>"
    permissions: dict[str, object] = {
        # an empty allow list still has to deny everything: NATS reads a missing list as "all"
        "publish": {"allow": list(perms.publish)} if perms.publish else {"deny": [">"]},
        "subscribe": {"allow": [*perms.subscribe, inbox]},
    }
    if perms.responses:
        permissions["allow_responses"] = dict(perms.responses)
    return {"nkey": nkey, "permissions": permissions}


def authorization(keys: dict[str, str], *, extra_users: list[dict[str, object]] | None = None) -> str:
    """The ``authorization`` block for ``keys`` (identity -> public NKey, or ``$VARIABLE``).

    Every identity of the permissions file must have a key: a server without one of them would
    refuse that service."""
    identities = load_identities()
    missing = set(identities) - set(keys)
    if missing:
        raise ValueError(f"no NKey for {sorted(missing)}")
    users = [_user(keys[name], perms, name) for name, perms in identities.items()]
    users += extra_users or []
    lines = ["authorization {", "  users = ["]
    for user in users:
        lines.append("    " + _conf(user) + ",")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _conf(value: object) -> str:
    # NATS configuration accepts JSON; a bare ``$NAME`` (never quoted) is a variable reference
    if isinstance(value, str) and value.startswith("$JANUS_NKEY_"):
        return value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_conf(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_conf(v) for v in value) + "]"
    return json.dumps(value)


def variable_keys() -> dict[str, str]:
    return {name: f"${env_name(name)}" for name in load_identities()}


def new_seed() -> bytes:
    """A fresh user NKey seed (``SU...``)."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    kp = nkeys.from_seed(bytearray(seed))
    try:
        return str(kp.public_key.decode())
    finally:
        kp.wipe()


def generate_keys(directory: Path) -> dict[str, tuple[Path, str]]:
    """identity -> (seed file, public key): new seeds, written readable by the owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}
    for name in load_identities():
        seed = new_seed()
        path = directory / f"{name}.nk"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
        out[name] = (path, public_key(seed))
    return out


def write_tls(directory: Path, host: str, days: int = 825) -> None:
    """A private CA and a server certificate for ``host`` signed by it (``ca.crt``, ``tls.crt``,
    ``tls.key``), for a single-machine stack; Kubernetes takes them from cert-manager instead."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "janus-nats-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(host), x509.DNSName("localhost")]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(cert.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.natsauth", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keys", help="a new seed per identity in DIR; prints the servers' variables")
    k.add_argument("dir", type=Path)
    c = sub.add_parser("compose", help="seeds, the servers' variables and TLS files for docker compose")
    c.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    keys = generate_keys(args.dir)
    (args.dir / "public.env").write_text("".join(f"{n}={pub}\n" for n, (_, pub) in keys.items()))
    if args.cmd == "keys":
        print(f"wrote {args.dir}: a seed per identity (<identity>.nk) and the public keys (public.env)")
        return 0
    # the containers run as another uid than the file's owner: the directory, not the files, is private
    args.dir.chmod(0o700)
    for path, _ in keys.values():
        path.chmod(0o644)
    (args.dir / "nkeys.env").write_text("".join(f"{env_name(n)}={pub}\n" for n, (_, pub) in keys.items()))
    write_tls(args.dir / "tls", "nats")
    (args.dir / "tls" / "tls.key").chmod(0o644)
    print(f"wrote {args.dir}: a seed per identity, nkeys.env and tls/ for docker compose")
    return 0


if __name__ == "__main__":
    sys.exit(main())
