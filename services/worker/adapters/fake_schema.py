"""Instances of JSON Schemas, for the built-in fake provider's tool arguments and structured answers.

What a client's code depends on when it parses a model's JSON: the types, ``enum``/``const``, the
required properties (every property under ``strict``, as OpenAI's structured outputs answer),
``$ref`` into ``$defs`` (the SDKs' ``parse()`` helpers send Pydantic models that way), lengths and
bounds. Deterministic: the same schema gives the same instance.
"""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 12
# a schema is the caller's to write: "minItems": 1e9, or arrays nested twelve deep, must not make
# the worker build a gigabyte. Past these bounds the instance stops growing (and may then be invalid).
_MAX_NODES = 2000
_MAX_ITEMS = 64
_MAX_CHARS = 4096


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node if isinstance(node, dict) else {}


_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00",
    "email": "someone@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and value > 0 else 0


def _string(schema: dict[str, Any]) -> str:
    fmt = schema.get("format")
    value = _FORMATS.get(fmt, "example") if isinstance(fmt, str) else "example"
    value = value.ljust(min(_int(schema.get("minLength")), _MAX_CHARS), "x")
    high = schema.get("maxLength")
    return value[:high] if isinstance(high, int) else value


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    value: float = 1
    if isinstance(low, int | float):
        value = low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    elif isinstance(high, int | float):
        value = high - (1 if "exclusiveMaximum" in schema and "maximum" not in schema else 0)
    return int(value) if integer else float(value)


def example_value(schema: Any, *, strict: bool = False) -> Any:
    """A value valid against ``schema``; with ``strict``, objects carry every property. A schema
    too odd to follow (``"properties": 3``, an infinite bound) gets null rather than a worker error:
    the gateway checks a schema's outline, not every keyword's type."""
    try:
        return _Builder(schema, strict).value(schema, 0)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, OverflowError):
        return None


class _Builder:
    def __init__(self, root: Any, strict: bool) -> None:
        self.root = root if isinstance(root, dict) else {}
        self.strict = strict
        self.nodes = _MAX_NODES

    def value(self, schema: Any, depth: int) -> Any:
        self.nodes -= 1
        if not isinstance(schema, dict) or depth > _MAX_DEPTH or self.nodes < 0:
            return None
        return self._build(_resolve(schema, self.root), depth)

    def _build(self, schema: dict[str, Any], depth: int) -> Any:
        strict, root = self.strict, self.root

        def sub(s: Any) -> Any:
            return self.value(s, depth + 1)

        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        if "default" in schema:
            return schema["default"]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                # a nullable field ("anyOf": [X, {"type": "null"}]) gets X, not null
                options = [s for s in schema[key] if not (isinstance(s, dict) and s.get("type") == "null")]
                return sub((options or schema[key])[0])
        if schema.get("allOf"):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                part = _resolve(part, root) if isinstance(part, dict) else {}
                merged = {
                    **merged,
                    **part,
                    "properties": {**merged.get("properties", {}), **part.get("properties", {})},
                    "required": [*merged.get("required", []), *part.get("required", [])],
                }
            return sub(merged)
        typ = schema.get("type", "object" if "properties" in schema else "string")
        if isinstance(typ, list):
            typ = next((t for t in typ if t != "null"), "null")
        if typ == "object":
            props = schema.get("properties") or {}
            names = list(props) if strict else [k for k in schema.get("required") or [] if isinstance(k, str)]
            return {k: sub(props.get(k, {})) for k in names}
        if typ == "array":
            n = min(_int(schema.get("minItems")), _MAX_ITEMS)
            return [sub(schema.get("items", {})) for _ in range(n)]
        if typ in ("integer", "number"):
            return _number(schema, typ == "integer")
        if typ == "boolean":
            return True
        if typ == "null":
            return None
        return _string(schema)
