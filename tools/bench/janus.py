"""The Janus side of a benchmark run: a generated catalog and plans, a stack, a token.

The catalog has one ``openai_compat`` provider whose only deployment is the fake upstream, so every
request takes the OpenAI-compatible adapter path; its key is read by the worker from the variable
named in ``api_key_env``, and the upstream refuses any other key. The plan's pools are far larger
than any run can spend, so metering admits everything while still reserving and settling each call.
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import msgspec

from tools.bench.procs import cpu_seconds
from tools.localstack import Stack, start_stack
from tools.token import make_token

PROVIDER = "bench"
DEPLOYMENT = "bench-upstream"
CHAT_MODEL = "bench-model"
# a second chat model on its own upstream whose streams carry many more chunks: the CPU per stream
# of the two, at the same concurrency, gives the cost of one streamed chunk (the slope)
LONG_MODEL = "bench-model-long"
LONG_DEPLOYMENT = "bench-upstream-long"
EMBED_MODEL = "bench-embed"
PLAN = "bench"
KEY_ENV = "JANUS_BENCH_UPSTREAM_KEY"
# Credits are microdollars: 10**12 is a million dollars, which no benchmark run gets near.
HUGE_CREDITS = 10**12


def catalog(upstream_base_url: str, dimensions: int, long_upstream_url: str = "") -> dict[str, object]:
    deployments = [{"id": DEPLOYMENT, "base_url": upstream_base_url, "api_key_env": KEY_ENV}]
    models: list[dict[str, object]] = []
    if long_upstream_url:
        deployments.append({"id": LONG_DEPLOYMENT, "base_url": long_upstream_url, "api_key_env": KEY_ENV})
        models.append(
            {
                "id": LONG_MODEL,
                "owned_by": "bench",
                "capabilities": ["streaming"],
                "price": {"input": 0.10, "output": 0.40},
                "quality": 1,
                "serve": [{"deployment": LONG_DEPLOYMENT, "model": "bench-upstream-chat"}],
            }
        )
    return {
        "providers": [{"id": PROVIDER, "kind": "openai_compat", "deployments": deployments}],
        "models": [
            *models,
            {
                "id": CHAT_MODEL,
                "owned_by": "bench",
                "capabilities": ["streaming"],
                "price": {"input": 0.10, "output": 0.40},
                "quality": 1,
                # a provider-side name unlike the catalog id, so the translation is exercised
                "serve": [{"deployment": DEPLOYMENT, "model": "bench-upstream-chat"}],
            },
            {
                "id": EMBED_MODEL,
                "kind": "embeddings",
                "owned_by": "bench",
                "capabilities": ["embeddings"],
                "dimensions": dimensions,
                "price": {"input": 0.02},
                "serve": [{"deployment": DEPLOYMENT, "model": "bench-upstream-embed"}],
            },
        ],
    }


def plans() -> dict[str, object]:
    return {
        "default_plan": PLAN,
        "plans": {
            PLAN: {
                "session": {"credits": HUGE_CREDITS, "hours": 5},
                "weekly": {"credits": HUGE_CREDITS * 10},
                "default_model": CHAT_MODEL,
                "auto_models": [CHAT_MODEL],
                "requests_per_minute": 10**9,
            }
        },
    }


def routing() -> dict[str, object]:
    """The router's config with no rules: the default rules name models this catalog lacks, and the
    benchmark names its model directly anyway."""
    return {"routing": {"rules": []}}


@dataclass
class Janus:
    stack: Stack
    token: str

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    def pids(self) -> dict[str, int]:
        """Every Janus process: nats-server and each service."""
        out = {"nats-server": self.stack.nats.proc.pid}
        out.update({name: svc.proc.pid for name, svc in self.stack.services.items()})
        return out

    def bus_counters(self) -> tuple[int, int, int, int]:
        """Messages into and out of nats-server so far, then their bytes (``/varz``): one publish
        delivered to one subscriber counts once in each. The bytes are payloads (headers included),
        so a budget record's write to its key-value bucket counts whole."""
        varz = self.stack.nats.monitor("varz")
        return int(varz["in_msgs"]), int(varz["out_msgs"]), int(varz["in_bytes"]), int(varz["out_bytes"])

    def alive(self) -> list[str]:
        return [n for n, p in self.pids().items() if cpu_seconds(p) is not None]

    def stop(self) -> None:
        self.stack.stop()


def start(
    workdir: Path,
    upstream_base_url: str,
    upstream_key: str,
    *,
    dimensions: int,
    long_upstream_url: str = "",
    log_level: str = "WARNING",
    settings: dict[str, str] | None = None,
) -> Janus:
    workdir.mkdir(parents=True, exist_ok=True)
    files = {
        "catalog.yaml": catalog(upstream_base_url, dimensions, long_upstream_url),
        "plans.yaml": plans(),
        "routing.yaml": routing(),
    }
    for name, doc in files.items():
        (workdir / name).write_bytes(msgspec.yaml.encode(doc))
    env = {
        "JANUS_CATALOG": str(workdir / "catalog.yaml"),
        "JANUS_PLANS": str(workdir / "plans.yaml"),
        "JANUS_ROUTING": str(workdir / "routing.yaml"),
        "JANUS_LOG_LEVEL": log_level,
        KEY_ENV: upstream_key,
        **(settings or {}),
    }
    stack = start_stack(workdir / "stack", env=env, nats_monitor=True)
    token = make_token("bench-user", PLAN, "bench@example.com", secret=stack.env["JANUS_JWT_SECRET"])
    return Janus(stack, token)


def new_upstream_key() -> str:
    return "sk-bench-" + secrets.token_hex(12)


def probe(janus: Janus, model: str = CHAT_MODEL) -> str:
    """One buffered request through the gateway; '' when it answers 200, else what went wrong.

    Run before the load so a broken path fails with the gateway's own error, not a table of zeros."""
    body = msgspec.json.encode(
        {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 16}
    )
    req = urllib.request.Request(
        janus.base_url + "/chat/completions",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {janus.token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return "" if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:500].decode(errors='replace')}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
