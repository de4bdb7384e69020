"""``/v1/models`` served from the gateway's own catalog load: every body is encoded once, at start."""

from __future__ import annotations

import msgspec

from shared.catalog import Catalog
from shared.errors import ModelNotFound


class ModelObject(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"


_encode = msgspec.json.Encoder().encode


class ModelIndex:
    def __init__(self, catalog: Catalog) -> None:
        objects = [ModelObject(m.id, m.created, m.owned_by) for m in catalog.models]
        self.list_body = _encode(ModelList(objects))
        # an alias answers under the name it was asked by, as OpenAI answers for its own aliases
        self._bodies = {
            name: _encode(ModelObject(name, m.created, m.owned_by))
            for name, m in catalog.model_by_name.items()
        }

    def body(self, model_id: str) -> bytes:
        try:
            return self._bodies[model_id]
        except KeyError:
            raise ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                                param="model") from None
