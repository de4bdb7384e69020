"""The shapes of an embeddings ``input`` the worker takes: texts everywhere, token ids (one array or
an array of arrays) only where the provider takes them, and a clear 400 otherwise. The request is
decoded with the gateway's own decoder and checks (``shared.openai_request``)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.worker.call import _inputs
from shared.errors import InvalidRequest
from shared.openai_request import EmbeddingsRequest, decode_embeddings, input_tokens


def _req(raw: Any) -> EmbeddingsRequest:
    return decode_embeddings(msgspec.json.encode({"model": "e", "input": raw}))


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("one text", ["one text"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_accepted_shapes(raw: Any, want: list[Any]) -> None:
    assert _inputs(_req(raw), "p", token_input=True) == want


@pytest.mark.parametrize("raw", [[1, 2, 3], [[1, 2], [3]]])
def test_token_ids_for_a_text_only_provider_are_a_clear_400(raw: Any) -> None:
    with pytest.raises(InvalidRequest, match="embeds text only") as err:
        _inputs(_req(raw), "gemini", token_input=False)
    assert err.value.param == "input" and err.value.status == 400


@pytest.mark.parametrize("raw", [None, [], 3, [[]], ["a", 1], [[1], ["x"]], [1.5], [[1, 2], 3]])
def test_other_shapes_are_refused(raw: Any) -> None:
    with pytest.raises(InvalidRequest) as err:
        _inputs(_req(raw), "p", token_input=True)
    assert (err.value.param or "").startswith("input")


def test_tokens_of_an_input_are_exact_for_token_ids() -> None:
    assert input_tokens([5, 6, 7]) == 3
    assert input_tokens("four words of text") > 0
