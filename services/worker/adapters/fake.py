"""The built-in offline provider (kind ``fake``): deterministic answers in process, no network.

It lets ``make run``, the tests and the benchmark exercise every path of Janus with no keys:

- text derived from the prompt (same prompt, same answer), one word per token: the prompt's own
  words restated among filler words, so a ``stop`` word the prompt contains can occur (and is cut);
- latency to the first token and a generation speed, from the deployment's ``options``
  (``latency_ms``, ``tokens_per_second``; 0 = as fast as possible), which the worker's settings
  ``JANUS_FAKE_LATENCY_MS`` / ``JANUS_FAKE_TOKENS_PER_SECOND`` override;
- real usage: prompt tokens counted from the messages, completion tokens = tokens generated;
- the output cap the gateway held (else ``max_tokens`` / ``max_completion_tokens``; finish
  ``length``) and ``stop`` sequences; one answer per request (``n`` > 1 is refused, as providers
  without ``n`` do, not silently answered once);
- tools: unless ``tool_choice`` is "none", a call to the named (or first) tool with arguments that
  satisfy the schema's required properties; several tools at once when parallel calls are allowed,
  several tools are given and the prompt asks for more than one thing ("both", "each", "all", ...);
  once the conversation ends with a tool's result, a text answer (unless a call is required);
- ``response_format``: ``json_object`` answers a JSON object, ``json_schema`` an instance valid
  against the schema (every property under ``strict``), buffered or streamed;
- embeddings: deterministic unit vectors of the model's dimensions, seeded by a hash of the input.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgspec
import numpy as np

from services.worker.adapters.base import (
    Capabilities,
    ChatContext,
    Embeddings,
    Event,
    Finish,
    FinishReason,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
    json_decode,
    json_text,
    option,
    output_cap,
    single_choice,
    text_of,
)
from services.worker.adapters.fake_schema import example_value
from shared import tokens
from shared.contract import Usage
from shared.openai_request import ChatRequest, EmbedInput, FunctionDef, NamedToolChoice, input_tokens
from shared.prompt import estimate_request

WORDS = (
    "the",
    "gateway",
    "answers",
    "with",
    "a",
    "steady",
    "voice",
    "and",
    "every",
    "request",
    "finds",
    "its",
    "model",
    "while",
    "budgets",
    "hold",
    "tokens",
    "flow",
    "through",
    "queues",
    "of",
    "light",
    "so",
    "that",
    "each",
    "reply",
    "arrives",
    "in",
    "order",
    "calm",
    "clear",
    "bright",
    "swift",
)
_PIECE = re.compile(r".{1,4}", re.DOTALL)  # about a token of JSON text
_MANY = re.compile(r"\b(both|each|all|every|several|multiple|parallel)\b", re.IGNORECASE)
DEFAULT_DIMENSIONS = 1536


def _digest(*parts: str) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "replace"))
        h.update(b"\x00")
    return h.digest()


def _last_user_text(req: ChatRequest) -> str:
    for m in reversed(req.messages):
        if m.role == "user":
            return text_of(m.content)
    return ""


def answer_words(prompt: str, model: str) -> list[str]:
    """16 to 63 words, chosen by the prompt's hash: deterministic, and different per prompt. The
    prompt's own words come back in order after a few filler words, as a model's answer restates
    its question; filler (by the hash) makes up the rest."""
    d = _digest(model, prompt)
    n = 16 + d[0] % 48
    filler = [WORDS[(d[i % 32] + i) % len(WORDS)] for i in range(1, n)]
    lead = 1 + d[1] % 4
    echoed = prompt.split(None, 64)[: n - 1 - lead]  # n - 1 - lead < 64: the unsplit rest is never used
    return ["Janus", *filler[:lead], *echoed, *filler[lead:]][:n]


def _schema(raw: msgspec.Raw) -> Any:
    return json_decode(raw) if raw else None


def json_answer(req: ChatRequest, words: list[str]) -> str | None:
    """The answer's JSON text when ``response_format`` asks for JSON, else None."""
    fmt = req.response_format
    if fmt is None:
        return None
    if fmt.type == "json_object":
        return json_text({"answer": " ".join(words)})
    spec = fmt.json_schema
    if fmt.type == "json_schema" and spec is not None:
        schema = _schema(spec.schema) or {"type": "object"}
        return json_text(example_value(schema, strict=spec.strict is True))
    return None


def _after_tool_result(req: ChatRequest) -> bool:
    return bool(req.messages) and req.messages[-1].role in ("tool", "function")


def _chosen_tools(req: ChatRequest, prompt: str) -> list[FunctionDef]:
    tools = [t.function for t in req.tools or () if t.function is not None]
    choice = req.tool_choice
    if not tools or choice == "none":
        return []
    named = isinstance(choice, NamedToolChoice)
    if _after_tool_result(req) and choice != "required" and not named:
        return []  # the tool answered: a model now answers the user in words
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name if choice.function is not None else None
        return [f for f in tools if f.name == name][:1] or tools[:1]
    if req.parallel_tool_calls is not False and len(tools) > 1 and _MANY.search(prompt):
        return tools
    return tools[:1]


class FakeAdapter:
    kind: ClassVar[str] = "fake"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, tools=True, json_mode=True, vision=True, embeddings=True, token_input=True, local=True
    )
    max_batch: ClassVar[int] = 2048

    def _pace(self, ctx: ChatContext) -> tuple[float, float]:
        latency = float(option(ctx, "latency_ms", "0") or 0) / 1000
        tps = float(option(ctx, "tokens_per_second", "0") or 0)
        return latency, (1.0 / tps if tps > 0 else 0.0)

    async def stream_events(self, ctx: ChatContext) -> AsyncIterator[Event]:
        req = ctx.chat
        single_choice(req)
        prompt = _last_user_text(req)
        prompt_tokens = ctx.prompt_tokens or estimate_request(req)
        latency, per_token = self._pace(ctx)
        if latency:
            await asyncio.sleep(latency)
        tools = _chosen_tools(req, prompt)
        if tools:
            completion = 0
            for i, fn in enumerate(tools):
                name = fn.name
                args = json_text(example_value(_schema(fn.parameters) or {"type": "object"}) or {})
                call_id = "call_" + _digest(ctx.request_id, prompt, str(i)).hex()[:24]
                completion += tokens.estimate_text(name) + tokens.estimate_text(args)
                # the arguments arrive in two fragments, as real providers send them
                cut = len(args) // 2
                yield ToolCallDelta(i, call_id, name, "")
                yield ToolCallDelta(i, arguments=args[:cut])
                yield ToolCallDelta(i, arguments=args[cut:])
                if per_token:
                    await asyncio.sleep(per_token)
            yield Finish("tool_calls")
            yield UsageEvent(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion))
            return
        words = answer_words(prompt, ctx.upstream_model)
        structured = json_answer(req, words)
        # one piece per token: words for text, four characters of JSON
        pieces = (
            _PIECE.findall(structured)
            if structured is not None
            else [w if i == 0 else " " + w for i, w in enumerate(words)]
        )
        limit = output_cap(ctx)
        stops = req.stop_sequences
        reason: FinishReason = "stop"
        if limit is not None and limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        generated = 0
        text = ""
        for i, piece in enumerate(pieces):
            if stops:
                candidate = text + piece
                cut = min((candidate.find(s) for s in stops if s in candidate), default=-1)
                if cut >= 0:
                    # the stop sequence itself is never part of the answer (OpenAI's behaviour)
                    if cut > len(text):
                        yield TextDelta(candidate[len(text) : cut])
                    generated += 1
                    reason = "stop"
                    break
                text = candidate
            generated += 1
            if per_token and i:
                await asyncio.sleep(per_token)
            yield TextDelta(piece)
        yield Finish(reason)
        yield UsageEvent(Usage(prompt_tokens=prompt_tokens, completion_tokens=generated))

    async def embed(self, ctx: ChatContext, inputs: list[EmbedInput]) -> Embeddings:
        dims = ctx.embeddings.dimensions or ctx.dimensions or DEFAULT_DIMENSIONS
        latency, _ = self._pace(ctx)
        if latency:
            await asyncio.sleep(latency)
        vectors = []
        for item in inputs:
            text = item if isinstance(item, str) else " ".join(map(str, item))
            seed = int.from_bytes(_digest(ctx.upstream_model, text)[:8], "little")
            v = np.random.default_rng(seed).standard_normal(dims)
            v /= np.linalg.norm(v)
            vectors.append(v.tolist())
        return Embeddings(vectors, Usage(prompt_tokens=sum(input_tokens(t) for t in inputs)))
