"""Places where a provider's real answers differ from its documented shape, each read the way the
provider means it (the replay battery in tests/e2e/test_replay_recordings.py shows the same on the
recorded answers, end to end), and answers no public recording shows."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from services.worker.adapters.base import ChatContext, ReadsErrorCause, StreamMessage
from services.worker.adapters.cohere import CohereAdapter
from services.worker.adapters.gemini import GeminiAdapter, GeminiStream
from services.worker.adapters.openai_compat import OpenAICompatAdapter
from services.worker.openai import chat_completion_decoder, rewrite_completion
from services.worker.transport import Transport
from shared.catalog import Deployment, Price, Provider
from shared.contract import Usage
from shared.errors import UpstreamClientError, UpstreamError, UpstreamTimeout
from shared.money import PriceUnits, cost_credits
from tests.fixtures.client_requests import chat


def google_error(code: int, status: str, reason: str | None) -> dict[str, object]:
    err: dict[str, object] = {"code": code, "message": "the key is not one we know", "status": status}
    if reason is not None:
        err["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
    return {"error": err}


# ------------------------------------------------------------------ Gemini: a rejected key is a 400
@pytest.mark.parametrize("reason", ["API_KEY_INVALID", "API_KEY_EXPIRED"])
def test_gemini_key_rejected_with_400_is_read_as_401(reason: str) -> None:
    adapter = GeminiAdapter()
    assert isinstance(adapter, ReadsErrorCause)
    body = json.dumps(google_error(400, "INVALID_ARGUMENT", reason)).encode()
    assert adapter.error_status(400, body) == 401


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(google_error(400, "INVALID_ARGUMENT", None)).encode(),
        json.dumps(google_error(400, "INVALID_ARGUMENT", "FIELD_INVALID")).encode(),
        b"<html>Bad Request</html>",
        b'{"error": "a string"}',
        b'{"error": {"details": "not a list"}}',
        b"[]",
    ],
)
def test_gemini_other_400s_stay_the_callers(body: bytes) -> None:
    assert GeminiAdapter().error_status(400, body) == 400


async def test_gemini_key_rejected_is_our_configuration_not_the_caller() -> None:
    """Through the real transport: the 400 becomes 502 ``upstream_auth``, not retried by the SDK."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(google_error(400, "INVALID_ARGUMENT", "API_KEY_INVALID"), status=400)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    transport = Transport()
    await transport.start()
    try:
        dep = Deployment(id="g", base_url=f"http://127.0.0.1:{port}")
        ctx = ChatContext(
            provider=Provider(id="g", kind="gemini", deployments=[dep]),
            deployment=dep,
            upstream_model="gemini-2.5-flash",
            **chat({"messages": [{"role": "user", "content": "hi"}]}),
            stream=False,
            api_key="k",
        )
        adapter = GeminiAdapter()
        with pytest.raises(UpstreamClientError) as refused:
            await transport.fetch(adapter.chat_request(ctx), adapter)
    finally:
        await transport.close()
        await runner.cleanup()
    err = refused.value
    assert (err.http_status, err.code) == (502, "upstream_auth")
    assert err.headers()["x-should-retry"] == "false"


def test_gemini_key_rejected_inside_a_stream_is_the_same() -> None:
    msg = StreamMessage(json.dumps(google_error(400, "INVALID_ARGUMENT", "API_KEY_INVALID")).encode())
    with pytest.raises(UpstreamClientError) as refused:
        GeminiStream().feed(msg)
    assert refused.value.code == "upstream_auth"


# ----------------------------------------------------------- Cohere: one family of counts per call
PRICE = PriceUnits.of(Price(input=1.0, cached_input=0.1, output=2.0))


def test_cohere_bills_billed_units_at_the_input_price() -> None:
    # billed input and the cached count come from different families: never price one by the other
    usage = {
        "billed_units": {"input_tokens": 2000, "output_tokens": 3},
        "tokens": {"input_tokens": 2500, "output_tokens": 5},
        "cached_tokens": 2490,
    }
    body = {
        "id": "x",
        "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
        "usage": usage,
    }
    got = CohereAdapter().parse_chat(json.dumps(body).encode()).usage
    assert got == Usage(prompt_tokens=2000, completion_tokens=3)
    assert cost_credits(got, PRICE) == cost_credits(Usage(2000, 3), PRICE)


def test_cohere_without_billed_units_reads_tokens_and_their_cache() -> None:
    body = {
        "id": "x",
        "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
        "usage": {"tokens": {"input_tokens": 100, "output_tokens": 4}, "cached_tokens": 90},
    }
    got = CohereAdapter().parse_chat(json.dumps(body).encode()).usage
    assert got == Usage(prompt_tokens=100, completion_tokens=4, cached_tokens=90)


# ------------------------------------------- OpenAI-compatible: buffered answers keep ``reasoning``
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "4", "reasoning": "two and two"},
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}


def test_openai_compat_buffered_reasoning_is_kept() -> None:
    body = json.dumps(ANSWER).encode()
    assert OpenAICompatAdapter().parse_chat(body).reasoning == "two and two"
    out = json.loads(rewrite_completion(chat_completion_decoder.decode(body), "r", 1, "m", Usage(5, 7)))
    message = out["choices"][0]["message"]
    # the name streams use, so a buffered and a streamed answer carry the same content
    assert message["reasoning_content"] == "two and two"
    assert "reasoning" not in message


def test_openai_compat_reasoning_content_wins_when_both_are_sent() -> None:
    doc = json.loads(json.dumps(ANSWER))
    doc["choices"][0]["message"]["reasoning_content"] = "from deepseek"
    body = json.dumps(doc).encode()
    assert OpenAICompatAdapter().parse_chat(body).reasoning == "from deepseek"
    out = json.loads(rewrite_completion(chat_completion_decoder.decode(body), "r", 1, "m", Usage(5, 7)))
    assert out["choices"][0]["message"]["reasoning_content"] == "from deepseek"


# ------------------------------------------------------------------ answers no recording shows
def test_gemini_prompt_blocked_before_any_candidate_is_content_filter() -> None:
    body = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
    }
    answer = GeminiAdapter().parse_chat(json.dumps(body).encode())
    assert (answer.content, answer.finish_reason, answer.usage) == ("", "content_filter", Usage(9, 0))


@pytest.mark.parametrize(("reason", "error"), [("ERROR", UpstreamError), ("TIMEOUT", UpstreamTimeout)])
def test_cohere_failure_told_through_finish_reason_is_an_error(reason: str, error: type[Exception]) -> None:
    body = {
        "id": "x",
        "finish_reason": reason,
        "message": {"role": "assistant", "content": []},
        "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 0}},
    }
    with pytest.raises(error):
        CohereAdapter().parse_chat(json.dumps(body).encode())
