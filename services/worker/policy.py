"""What a worker changes in a client's request before any adapter reads it: the parameter policy.

The gateway refuses the options that would cost more than the hold (``services.gateway.body``:
``service_tier`` other than the default, ``store: true``, audio output, ``web_search_options``,
``prediction``); here, on the typed request every adapter reads (``apply``) and on the client's own
body where a provider is passed the parameters Janus does not model (``passthrough``):

- stripped: ``service_tier`` (the operator's account default applies), ``store`` and ``metadata``
  (nothing a client sends is kept on the operator's provider account);
- rewritten: ``user`` and ``safety_identifier`` become ``principal_id`` of the authenticated caller,
  so the provider's abuse reports name a stable caller of ours, never a name the client made up;
- the output cap: not here, in each adapter (``base.output_cap``), as its provider spells it.

OpenAI-compatible providers receive every other parameter as the client sent it; the other kinds
translate only the parameters their adapter knows and drop the rest.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from msgspec import UNSET

from shared.openai_request import ChatRequest, EmbeddingsRequest, members

STRIPPED = ("service_tier", "store", "metadata")
IDENTITY = ("user", "safety_identifier")


@functools.lru_cache(maxsize=4096)
def principal_id(user: str) -> str:
    """A stable, opaque id of an authenticated caller for providers' abuse tracking."""
    return hashlib.sha256(b"janus-principal\x00" + user.encode("utf-8", "replace")).hexdigest()[:32]


def apply(req: ChatRequest | EmbeddingsRequest, user: str) -> None:
    """The identity fields the client gave (null included) become the caller's opaque id. The
    stripped options are never translated, so the typed request needs nothing more."""
    if req.user is not UNSET:
        req.user = principal_id(user)
    if isinstance(req, ChatRequest) and req.safety_identifier is not UNSET:
        req.safety_identifier = principal_id(user)


def passthrough(raw: bytes, req: ChatRequest) -> dict[str, Any]:
    """The client's body as its members, less the stripped ones, with the identity fields as
    ``apply`` rewrote them in ``req`` (decoded from the same bytes)."""
    doc = members(raw)
    for key in STRIPPED:
        doc.pop(key, None)
    for key in IDENTITY:
        if key in doc:
            doc[key] = getattr(req, key)
    return doc
