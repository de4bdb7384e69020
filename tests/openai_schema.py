"""Validate what Janus returns against OpenAI's published response schemas (tests/spec/openai).

The document declares OpenAPI 3.1 but still carries the 3.0 keyword ``nullable: true`` in a few
places; plain JSON Schema would wrongly reject ``null`` there, so it is rewritten to
``anyOf: [{...}, {type: null}]`` at load. Format checks are off.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SPEC = Path(__file__).parent / "spec" / "openai" / "openai-schemas.json"


def _fix_nullable(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _fix_nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) is True:
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_fix_nullable(v) for v in node]
    return node


@cache
def _document() -> dict[str, Any]:
    return _fix_nullable(json.loads(SPEC.read_text()))


@cache
def validator(root: str) -> jsonschema.protocols.Validator:
    doc = _document()
    schema = {"$ref": f"#/components/schemas/{root}", "components": doc["components"]}
    cls = jsonschema.validators.validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    return cls(schema)


def validate(root: str, instance: Any) -> None:
    """Raise ``jsonschema.ValidationError`` when ``instance`` breaks OpenAI's schema ``root``."""
    validator(root).validate(instance)
