"""``/v1/models`` served from the gateway's own catalog load: every body is encoded once, at start.

Each model object is OpenAI's (``id``, ``object``, ``created``, ``owned_by``) plus a ``janus`` object
with what a client choosing a model needs: kind, context window, output cap, capabilities and the
price in USD per 1M tokens (which is also credits per token). It sits under its own name so it can
never collide with a field OpenAI adds.
"""

from __future__ import annotations

import msgspec

from shared.catalog import Catalog, Model
from shared.errors import ModelNotFound


class Pricing(msgspec.Struct):
    input: float
    output: float
    cached_input: float


class Details(msgspec.Struct):
    kind: str
    context_window: int
    max_output_tokens: int
    capabilities: list[str]
    price: Pricing  # USD per 1M tokens


class ModelObject(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"
    janus: Details | None = None


def _object(name: str, m: Model) -> ModelObject:
    p = m.price
    cached = p.input if p.cached_input is None else p.cached_input
    details = Details(m.kind, m.context_window, m.max_output_tokens, list(m.capabilities),
                      Pricing(p.input, p.output, cached))
    return ModelObject(name, m.created, m.owned_by, janus=details)


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"


_encode = msgspec.json.Encoder().encode


class ModelIndex:
    def __init__(self, catalog: Catalog) -> None:
        objects = [_object(m.id, m) for m in catalog.models]
        self.list_body = _encode(ModelList(objects))
        # an alias answers under the name it was asked by, as OpenAI answers for its own aliases
        self._bodies = {
            name: _encode(_object(name, m))
            for name, m in catalog.model_by_name.items()
        }

    def body(self, model_id: str) -> bytes:
        try:
            return self._bodies[model_id]
        except KeyError:
            raise ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                                param="model") from None
