"""A whole Janus stack on this machine: nats-server with JetStream, then the four services as
processes, each with its own NATS identity.

    python -m tools.localstack      (``make run``): the stack on 127.0.0.1:8080 with a dev token

The benchmark, the soak run and the tests start the same processes the same way (``start_stack``,
``start_service``), so what they measure is what ``make run`` runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.gateway.jwt_verify import DEV_JWT_SECRET
from shared.bus import redact_url
from shared.catalog import load_plans
from tools.localnats import (
    NATS_GOMAXPROCS_ENV,
    NatsServer,
    cluster_url,
    free_port,
    local_keys,
    seed_file,
    start_nats,
    stop_process,
)
from tools.token import make_token

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("metering", "router", "worker", "gateway")
DEV_SECRET = DEV_JWT_SECRET  # the gateway accepts it only with JANUS_DEV_STACK=true


@dataclass
class ServiceProc:
    name: str
    proc: subprocess.Popen[bytes]
    ops_port: int
    env: dict[str, str]
    log_path: Path
    # env names of the ports chosen here rather than by the caller: chosen again when another
    # process takes one between the choice and the service's bind (free_port cannot reserve it)
    movable: tuple[str, ...] = ()
    log_offset: int = 0  # where this process's output starts in the (appended) log
    respawns: int = 0

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_port}/readyz", timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._respawn_on_port_taken():
                    deadline = time.monotonic() + timeout
                    continue
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def _respawn_on_port_taken(self) -> bool:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.log_offset)
                out = f.read().decode(errors="replace")
        except OSError:
            return False
        if not self.movable or self.respawns >= 3 or "address already in use" not in out:
            return False
        env = {**self.env, **{k: str(free_port()) for k in self.movable}}
        fresh = _spawn(self.name, env, self.log_path, self.movable, console=False)
        self.proc, self.ops_port, self.env = fresh.proc, fresh.ops_port, fresh.env
        self.log_offset, self.respawns = fresh.log_offset, self.respawns + 1
        return True

    def metrics(self, timeout: float = 2.0) -> str:
        """The Prometheus text this replica exports (see ``parse_metric``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_port}/metrics", timeout=timeout) as r:
            return str(r.read().decode())

    def rss_kib(self) -> int:
        """Resident memory of the process now, from /proc (Linux), in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        return stop_process(self.proc, sig, timeout)


def start_service(
    name: str,
    env: dict[str, str],
    workdir: Path,
    *,
    tag: str = "",
    wait: bool = True,
    stdout_to_console: bool = False,
    move_ports: tuple[str, ...] = (),
) -> ServiceProc:
    """Start ``services.<name>``. Its ops port is ``JANUS_OPS_PORT`` or a free one; a free one (and
    the env names in ``move_ports``, e.g. a gateway's ``JANUS_PORT``) is chosen again if another
    process binds it first (see ``ServiceProc.wait_ready``)."""
    movable = tuple(move_ports) + (() if env.get("JANUS_OPS_PORT") else ("JANUS_OPS_PORT",))
    ops_port = int(env.get("JANUS_OPS_PORT") or free_port())
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES},
        # the local servers know only this process's seeds; a caller may still pass another file
        "JANUS_NATS_NKEY_FILE": seed_file(name),
        **env,
        "JANUS_OPS_PORT": str(ops_port),
        "PYTHONUNBUFFERED": "1",
    }
    svc = _spawn(
        name + tag, full_env, workdir / f"{name}{tag}.log", movable, console=stdout_to_console, module=name
    )
    if wait:
        svc.wait_ready()
    return svc


def _spawn(
    name: str,
    env: dict[str, str],
    log_path: Path,
    movable: tuple[str, ...],
    *,
    console: bool,
    module: str = "",
) -> ServiceProc:
    module = module or name.split("-", 1)[0]
    out = None if console else log_path.open("ab")
    offset = log_path.stat().st_size if out else 0
    proc = subprocess.Popen(
        [sys.executable, "-m", f"services.{module}"],
        cwd=str(ROOT),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
    )
    if out:
        out.close()
    return ServiceProc(name, proc, int(env["JANUS_OPS_PORT"]), env, log_path, movable, offset)


@dataclass
class Stack:
    workdir: Path
    nats: NatsServer
    env: dict[str, str]
    services: dict[str, ServiceProc] = field(default_factory=dict)
    gateway_port: int = 0
    cluster: list[NatsServer] = field(default_factory=list)  # every node, when on a NATS cluster

    @property
    def base_url(self) -> str:
        scheme = "https" if self.env.get("JANUS_TLS_CERT") else "http"  # the gateway serving TLS itself
        return f"{scheme}://127.0.0.1:{self.gateway_port}/v1"

    @property
    def harness_url(self) -> str:
        """NATS with the tests' all-powerful user (``JANUS_NATS_URL`` is what the services use)."""
        return cluster_url(self.cluster or [self.nats])

    def stop(self) -> None:
        for name in reversed(list(self.services)):
            self.services[name].stop()
        for srv in self.cluster or [self.nats]:
            srv.stop()


# the launcher's own variables (``make run``), which no service reads: kept from the services'
# environment, where each would be reported as an unknown setting
LAUNCHER_VARIABLES = frozenset({"JANUS_DATA_DIR", "JANUS_NATS_PORT", NATS_GOMAXPROCS_ENV})

# what the local stack serves when neither the caller nor the shell says otherwise
STACK_DEFAULTS = {
    "JANUS_JWT_SECRET": DEV_SECRET,
    "JANUS_CATALOG": str(ROOT / "config" / "catalog.yaml"),
    "JANUS_PLANS": str(ROOT / "config" / "plans.yaml"),
}


def base_env(nats_url: str, **extra: str) -> dict[str, str]:
    """The services' environment: the stack's NATS, then ``extra``, then the shell's ``JANUS_*``
    (``JANUS_CATALOG=... make run`` serves that catalog), then the offline defaults. The URL the
    services get carries no credentials: each connects as its own identity."""
    shell = {k: v for k, v in os.environ.items() if k in STACK_DEFAULTS and v}
    return {
        **STACK_DEFAULTS,
        "JANUS_DEV_STACK": "true",
        **shell,
        **extra,
        "JANUS_NATS_URL": redact_url(nats_url),
    }


def start_stack(
    workdir: Path | None = None,
    *,
    gateway_port: int = 0,
    nats_port: int = -1,
    env: dict[str, str] | None = None,
    services: tuple[str, ...] = SERVICES,
    console: bool = False,
    cluster: list[NatsServer] | None = None,
    nats_monitor: bool = False,
    harness: bool = True,
) -> Stack:
    """``cluster``: run the services on these already running nodes (see ``start_cluster``) instead
    of starting one nats-server; the stack then owns and stops them. ``nats_monitor`` opens the
    server's monitoring port on a port it chooses (``stack.nats.monitor("varz")``). ``harness=False``:
    no NATS user but the services' identities (``make run``)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="janus-"))
    monitor = -1 if nats_monitor else None
    nats = cluster[0] if cluster else start_nats(workdir, nats_port, monitor_port=monitor, harness=harness)
    full = base_env(cluster_url(cluster) if cluster else nats.url, **(env or {}))
    if cluster:
        full.setdefault("JANUS_NATS_REPLICAS", str(min(3, len(cluster))))
    http_movable = ("JANUS_PORT",) if not gateway_port and "JANUS_PORT" not in full else ()
    port = gateway_port or free_port()
    full.setdefault("JANUS_PORT", str(port))
    stack = Stack(workdir, nats, full, gateway_port=int(full["JANUS_PORT"]), cluster=list(cluster or []))
    try:
        procs = [
            start_service(
                n,
                full,
                workdir,
                wait=False,
                stdout_to_console=console,
                move_ports=http_movable if n == "gateway" else (),
            )
            for n in services
        ]
        for p in procs:
            p.wait_ready()
            stack.services[p.name] = p
            if p.name == "gateway":  # its HTTP port may have been chosen again
                full["JANUS_PORT"] = p.env["JANUS_PORT"]
                stack.gateway_port = int(p.env["JANUS_PORT"])
    except BaseException:
        for p in procs if "procs" in locals() else []:
            p.stop(signal.SIGKILL)
        for srv in cluster or [nats]:
            srv.stop()
        raise
    return stack


def main() -> None:
    port = int(os.environ.get("JANUS_PORT", "8080"))
    data = Path(os.environ.get("JANUS_DATA_DIR") or ROOT / ".janus")
    data.mkdir(parents=True, exist_ok=True)
    nats_port = int(os.environ.get("JANUS_NATS_PORT", "4222"))
    print("starting nats-server and the four services ...", flush=True)
    keys = local_keys(data / "nkeys")
    stack = start_stack(data, gateway_port=port, nats_port=nats_port, harness=False)
    plans = load_plans(stack.env["JANUS_PLANS"])
    tier = "pro" if plans.get("pro") is not None else plans.default_plan
    token = make_token("dev-user", tier, "dev@example.com", secret=stack.env["JANUS_JWT_SECRET"])
    print(
        f"""
Janus is running.

  base URL   {stack.base_url}
  console    {stack.base_url.removesuffix("/v1")}/console   (sign in with the dev token)
  catalog    {stack.env["JANUS_CATALOG"]}
  plans      {stack.env["JANUS_PLANS"]}   (the token below is on plan {tier})
  NATS       {stack.nats.url}   (JetStream data in {data}/)
  logs       {data}/<service>.log
  dev token  {token}

  curl {stack.base_url}/chat/completions \\
    -H "Authorization: Bearer {token}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Hello, what can you do?"}}]}}'

  make token USER=alice PLAN=developer   prints a token for another user and plan.
  JANUS_NATS_NKEY_FILE={keys["operator"][0]} janus keys create ...   the operator's identity.
Ctrl-C stops everything.
""",
        flush=True,
    )
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            for svc in stack.services.values():
                if svc.proc.poll() is not None:
                    print(f"{svc.name} exited ({svc.proc.returncode}); see {data}/{svc.name}.log", flush=True)
                    stopping = True
            time.sleep(0.3)
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()
