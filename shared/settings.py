"""Typed settings from the environment.

A settings class is a msgspec Struct; each field ``foo_bar`` is read from ``JANUS_FOO_BAR``. Values
are converted from strings (``"8080"`` to ``8080``) and validated at startup: a bad value stops the
service with the variable's name. Secrets are referenced by variable *name* and never logged.
"""

from __future__ import annotations

import os
from typing import TypeVar

import msgspec

from shared.catalog import ConfigError

T = TypeVar("T", bound=msgspec.Struct)

PREFIX = "JANUS_"


class CommonSettings(msgspec.Struct, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    log_level: str = "INFO"
    ops_host: str = "127.0.0.1"
    ops_port: int = 0  # each service has its own default; 0 picks a free port
    shutdown_grace_seconds: float = 30.0
    nats_replicas: int = 1  # JetStream replicas for streams and buckets (3 on a cluster)
    # the service's NATS identity: a file holding its NKey seed (a mounted Secret), never the seed
    nats_nkey_file: str = ""
    # CA bundle the NATS server's certificate is verified against (TLS); empty: the system's
    nats_ca_file: str = ""


def load_settings(cls: type[T], env: dict[str, str] | None = None) -> T:
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
