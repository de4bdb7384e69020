"""Typed settings from the environment: the one module that reads it.

A settings class is a msgspec Struct; each field ``foo_bar`` is read from ``JANUS_FOO_BAR``. Values
are converted from strings (``"8080"`` to ``8080``) and validated at startup: a bad value stops the
service with the variable's name. Secrets are referenced by variable *name* and never logged; a
variable the configuration names (a provider key's ``api_key_env``) is read with ``variable``.

A ``JANUS_*`` variable that no settings class reads is reported at start-up with the closest known
name (``unknown_variables``): a typo would otherwise leave a default in force without a word. It is a
warning, not a refusal: during a rollout or a rollback, pods of one version run with configuration
written for the other, and a variable one version added must not stop the other from starting.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection, Iterable, Mapping
from typing import TypeVar

import msgspec

from shared.catalog import ConfigError

T = TypeVar("T", bound=msgspec.Struct)

PREFIX = "JANUS_"

# past the request bound: a worker's deadline error, the gateway's last frames and its settlement
SHUTDOWN_MARGIN_SECONDS = 10.0
# after the grace, the NATS connection drains (shared.service): sent messages reach the server
NATS_DRAIN_SECONDS = 10.0


def termination_grace_seconds(common: CommonSettings, pre_stop_seconds: float = 0.0) -> float:
    """The smallest pod ``terminationGracePeriodSeconds`` that lets a stopping service finish: the
    preStop sleep, the drain grace and the NATS drain; SIGKILL must never cut a draining stream."""
    return pre_stop_seconds + common.drain_grace() + NATS_DRAIN_SECONDS


class CommonSettings(msgspec.Struct, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    log_level: str = "INFO"
    ops_host: str = "127.0.0.1"
    ops_port: int = 0  # each service has its own default; 0 picks a free port
    # the longest one request may take, stream included: the gateway sends it to workers as the
    # request's deadline, and a stopping service waits this long for what it has in flight
    request_deadline_seconds: float = 600.0
    # after SIGTERM, how long in-flight work may run; 0: derived from the request bound, so that a
    # rollout or a scale-down never cuts a stream that is still within it
    shutdown_grace_seconds: float = 0.0
    nats_replicas: int = 1  # JetStream replicas for streams and buckets (3 on a cluster)
    # the service's NATS identity: a file holding its NKey seed (a mounted Secret), never the seed
    nats_nkey_file: str = ""
    # CA bundle the NATS server's certificate is verified against (TLS); empty: the system's
    nats_ca_file: str = ""
    # a request's hold lives this long after its last sign of life (admission or renewal), then
    # metering's reaper frees it: its gateway died. Gateways renew every hold_renew_seconds while
    # the request runs. Both services read both, and refuse to start when they do not fit the bound
    hold_ttl_seconds: float = 900.0
    hold_renew_seconds: float = 120.0
    # the catalog and plans files every service is deployed with; empty: the ones in config/
    catalog: str = ""
    plans: str = ""

    def drain_grace(self) -> float:
        """How long a stopping service lets its in-flight work run."""
        if self.shutdown_grace_seconds > 0:
            return self.shutdown_grace_seconds
        return self.request_deadline_seconds + SHUTDOWN_MARGIN_SECONDS

    def check_hold_lifetime(self) -> None:
        """Refuse a hold lifetime the longest request can outlive. Renewals are fire-and-forget (a
        lost one is followed by the next), so the lifetime alone must cover the request bound; one
        more renewal interval on top is the time the settlement of the longest request has to land
        before its hold could be freed."""
        if self.hold_renew_seconds <= 0:
            raise ConfigError(
                f"bad setting: JANUS_HOLD_RENEW_SECONDS must be above 0, not {self.hold_renew_seconds:g}"
            )
        need = self.request_deadline_seconds + self.hold_renew_seconds
        if self.hold_ttl_seconds <= need:
            raise ConfigError(
                f"bad setting: JANUS_HOLD_TTL_SECONDS ({self.hold_ttl_seconds:g}) must be above "
                f"JANUS_REQUEST_DEADLINE_SECONDS ({self.request_deadline_seconds:g}) + "
                f"JANUS_HOLD_RENEW_SECONDS ({self.hold_renew_seconds:g}) = {need:g}: the reaper would "
                "free the hold of a request still within its bound whenever its renewals are lost, and "
                "its caller could spend past their budget; raise JANUS_HOLD_TTL_SECONDS with the bound"
            )


def load_settings(cls: type[T], env: Mapping[str, str] | None = None) -> T:
    src = os.environ if env is None else env
    raw: dict[str, str] = {}
    for name in cls.__struct_fields__:
        key = PREFIX + name.upper()
        if key in src and src[key] != "":
            raw[name] = src[key]
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        # "Expected `int`, got `str` - at `$.port`" -> name the variable
        msg = str(exc)
        for name in cls.__struct_fields__:
            msg = msg.replace(f"`$.{name}`", PREFIX + name.upper())
        raise ConfigError(f"bad setting: {msg}") from None


def variable(name: str, env: Mapping[str, str] | None = None) -> str:
    """The value of a variable the configuration names (``""`` when unset): read when used, so a
    rotated credential is picked up without a restart."""
    return (os.environ if env is None else env).get(name, "")


def variable_names(*classes: type[msgspec.Struct]) -> frozenset[str]:
    """The ``JANUS_*`` names the settings classes read."""
    return frozenset(PREFIX + name.upper() for cls in classes for name in cls.__struct_fields__)


def unknown_variables(known: Collection[str], env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(variable, closest known name or "")`` for each ``JANUS_*`` variable not in ``known``."""
    src = os.environ if env is None else env
    return [
        (name, _closest(name, known)) for name in sorted(src) if name.startswith(PREFIX) and name not in known
    ]


def _closest(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return match[0] if match else ""
