"""The fake provider's schema instances: valid where clients depend on it, bounded whatever the
schema asks, and never an error for a schema it cannot follow."""

from __future__ import annotations

import jsonschema
import pytest

from services.worker.adapters.fake_schema import example_value

NESTED = {
    "type": "object",
    "$defs": {
        "Item": {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 3}},
            "required": ["n"],
            "additionalProperties": False,
        }
    },
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 2},
        "when": {"type": "string", "format": "date-time"},
        "maybe": {"anyOf": [{"type": "string", "minLength": 12}, {"type": "null"}]},
        "kind": {"enum": ["a", "b"]},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    },
    "required": ["items", "kind"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("strict", [False, True])
def test_instances_are_valid_against_the_schema(strict: bool) -> None:
    value = example_value(NESTED, strict=strict)
    jsonschema.validate(value, NESTED)
    assert set(value) == (set(NESTED["properties"]) if strict else {"items", "kind"})  # type: ignore[arg-type]


def test_hostile_sizes_are_bounded() -> None:
    deep: dict[str, object] = {"type": "string", "minLength": 10**9}
    for _ in range(30):
        deep = {"type": "array", "minItems": 10**9, "items": deep}
    value = example_value(deep)
    assert len(repr(value)) < 1_000_000


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": 3, "required": ["a"]},
        {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": float("inf")}},
            "required": ["a"],
        },
        {"enum": {"a": 1}},
        {"allOf": [{"properties": []}]},
    ],
)
def test_a_schema_too_odd_to_follow_is_null_not_an_error(schema: dict[str, object]) -> None:
    example_value(schema, strict=True)
