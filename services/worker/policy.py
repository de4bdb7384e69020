"""What a worker changes in a client's request before any adapter reads it: the parameter policy.

The gateway refuses the options that would cost more than the hold (``services.gateway.body``:
``service_tier`` other than the default, ``store: true``, audio output, ``web_search_options``,
``prediction``); here, on the decoded body every adapter reads:

- stripped: ``service_tier`` (the operator's account default applies), ``store`` and ``metadata``
  (nothing a client sends is kept on the operator's provider account);
- rewritten: ``user`` and ``safety_identifier`` become ``principal_id`` of the authenticated caller,
  so the provider's abuse reports name a stable caller of ours, never a name the client made up;
- the output cap: not here, in each adapter (``base.output_cap``), as its provider spells it.

OpenAI-compatible providers receive every other parameter as the client sent it; the other kinds
translate only the parameters their adapter knows and drop the rest.
"""

from __future__ import annotations

import hashlib
from typing import Any

STRIPPED = ("service_tier", "store", "metadata")
IDENTITY = ("user", "safety_identifier")


def principal_id(user: str) -> str:
    """A stable, opaque id of an authenticated caller for providers' abuse tracking."""
    return hashlib.sha256(b"janus-principal\x00" + user.encode("utf-8", "replace")).hexdigest()[:32]


def apply(body: dict[str, Any], user: str) -> None:
    for key in STRIPPED:
        body.pop(key, None)
    for key in IDENTITY:
        if key in body:
            body[key] = principal_id(user)
