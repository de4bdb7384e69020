"""One unit of work: a WorkRequest turned into an upstream call and numbered frames.

    [Accepted]  [Heartbeat | Chunk]*  Done | Failed

The service sends the terminal frame and the ``Replier`` (``replier.py``) numbers every frame and
sends ``Accepted`` and heartbeats; this module produces what lies between and the terminal frame's
content. The events of one upstream read travel as one Chunk, at once, and a stream's last read
rides in its Done (``FRAMES_BATCHED``, when the gateway reads them). In-process adapters
(``Capabilities(local=True)``) yield canonical events directly; HTTP adapters go through the
transport and their parser. Everything after the events (encoding, usage accounting, frames) is the
same code for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from services.worker import openai
from services.worker.adapters.base import (
    ChatContext,
    Event,
    PassesOpenAIThrough,
    batch_limit,
    passes_openai_through,
)
from services.worker.replier import Replier
from services.worker.transport import Transport
from shared.contract import FRAMES_BATCHED, Chunk, Done, Failed, Usage, WorkRequest
from shared.errors import InvalidRequest, JanusError, UpstreamError
from shared.logging import get_logger
from shared.openai_request import EmbeddingsRequest, EmbedInput, embedding_inputs, input_tokens

log = get_logger("worker")
R = TypeVar("R")

EMBED_CONCURRENCY = 8  # upstream calls in flight for one embeddings request split into batches


def _inputs(req: EmbeddingsRequest, provider: str, token_input: bool) -> list[EmbedInput]:
    """The embeddings inputs: texts, or lists of token ids where the provider takes them."""
    inputs = embedding_inputs(req)[0]
    if not token_input and not isinstance(inputs[0], str):
        raise InvalidRequest(
            f"provider {provider!r} embeds text only; send 'input' as strings (token ids "
            "are for OpenAI-compatible deployments)",
            param="input",
            code="invalid_value",
        )
    return inputs


class Call:
    """Runs one WorkRequest; ``execute`` returns the terminal ``Done`` (raises on failure, after which
    ``produced`` and ``usage_so_far`` say what must still be charged)."""

    def __init__(
        self, req: WorkRequest, ctx: ChatContext, adapter: Any, transport: Transport, replier: Replier
    ) -> None:
        self.req = req
        self.ctx = ctx
        self.adapter = adapter
        self.transport = transport
        self.r = replier
        self.local = adapter.capabilities.local
        self._enc: openai.StreamEncoder | None = None
        self._asm: openai.CompletionAssembler | None = None  # in-process buffered answers
        self._prompt_estimate = 0
        self._embedded = 0  # prompt tokens of the embeddings batches the provider has answered
        self.started = time.perf_counter()

    # -------------------------------------------------------------------------------- accounting
    @property
    def produced(self) -> bool:
        return self._enc is not None and self._enc.produced

    def usage_so_far(self) -> Usage:
        """What a failed or cancelled call produced: the provider's report, counted where missing
        but only once output exists (a call that never reached the provider costs nothing)."""
        enc = self._enc
        if self.req.kind == "embeddings":
            # batches served before another failed were paid for upstream
            return Usage(prompt_tokens=self._embedded)
        if enc is None:
            if self._asm is not None:
                c = self._asm.completion()
                return openai.with_fallback(c.usage, self._prompt_estimate, openai.completion_size(c))
            return Usage()
        if enc.output_size:
            return enc.final_usage(self._prompt_estimate)
        return enc.usage

    def upstream_seconds(self) -> float:
        return time.perf_counter() - self.started

    # ------------------------------------------------------------------------------------ checks
    def _check_capabilities(self) -> None:
        caps = self.adapter.capabilities
        if self.req.kind == "embeddings":
            if not caps.embeddings:
                raise InvalidRequest(
                    f"provider {self.ctx.provider.id!r} does not serve embeddings", param="model"
                )
            return
        if self.req.stream and not caps.streaming:
            raise InvalidRequest("this model's provider cannot stream", param="stream")
        if not caps.tools and self.ctx.chat.tools:
            raise InvalidRequest("this model's provider does not support tools", param="tools")

    # ---------------------------------------------------------------------------------- execution
    async def execute(self) -> Done:
        self._check_capabilities()
        if self.req.kind == "embeddings":
            return await self._embeddings()
        self._prompt_estimate = self.ctx.prompt_tokens
        if self.req.stream:
            return await self._chat_stream()
        return await self._chat_buffered()

    async def _events(self) -> AsyncGenerator[tuple[list[Event], bool], None]:
        """The answer's events, those of one upstream read together, and whether the provider's
        stream had ended with them."""
        if self.local:
            async with contextlib.aclosing(self.adapter.stream_events(self.ctx)) as local_events:
                async for ev in local_events:
                    yield [ev], False
            return
        up = self.adapter.chat_request(self.ctx)
        parser = self.adapter.stream_parser(self.ctx)
        feed = parser.feed
        async with contextlib.aclosing(self.transport.stream(up, self.adapter)) as reads:
            async for msgs, ended in reads:
                events: list[Event] = []
                failure: JanusError | None = None
                for m in msgs:
                    try:
                        events += self._read(feed, m)
                    except JanusError as exc:  # an error event: what came before it still goes out
                        failure = exc
                        break
                if events:
                    yield events, ended and failure is None
                if failure is not None:
                    raise failure
        self._read(parser.finish)

    async def _chat_stream(self) -> Done:
        req, r = self.req, self.r
        enc = self._enc = openai.StreamEncoder(
            req.request_id, req.created, req.response_model, self.ctx.chat.include_usage
        )
        encode = enc.encode
        batched = req.frames >= FRAMES_BATCHED
        last: list[bytes] = []  # the provider's final read: it goes out with the Done
        try:
            async with contextlib.aclosing(self._events()) as events:
                async for batch, ended in events:
                    out = [data for ev in batch if (data := encode(ev)) is not None]
                    if not out:
                        continue
                    if not batched:
                        for data in out:
                            await r.send(Chunk(seq=r.next(), data=data))
                    elif ended:
                        last = out
                    else:
                        await r.send_chunks(out)
        except Exception:
            if last:  # the stream ended badly after all: what it produced still reaches the client
                await r.send_chunks(last)
            raise
        usage = enc.final_usage(self._prompt_estimate)
        tail = enc.usage_chunk(usage)
        if tail is not None:
            if batched:
                last.append(tail)
            else:
                await r.send(Chunk(seq=r.next(), data=tail))
        return Done(
            seq=0,
            usage=usage,
            finish_reason=enc.finish_reason,
            upstream_seconds=self.upstream_seconds(),
            deployment=req.deployment,
            chunks=last,
        )

    async def _chat_buffered(self) -> Done:
        req = self.req
        if self.local:
            asm = self._asm = openai.CompletionAssembler()
            async with contextlib.aclosing(self.adapter.stream_events(self.ctx)) as events:
                async for ev in events:
                    asm.add(ev)
            c = asm.completion()
        else:
            raw = await self.transport.fetch(self.adapter.chat_request(self.ctx), self.adapter)
            seconds = self.upstream_seconds()
            if passes_openai_through(self.adapter):
                adapter: PassesOpenAIThrough = self.adapter
                return self._passthrough(self._read(adapter.parse_chat_openai, raw), seconds)
            c = self._read(self.adapter.parse_chat, raw)
        seconds = self.upstream_seconds()
        usage = openai.with_fallback(c.usage, self._prompt_estimate, openai.completion_size(c))
        body = openai.completion_body(c, req.request_id, req.created, req.response_model, usage)
        return Done(
            seq=0,
            usage=usage,
            body=body,
            finish_reason=c.finish_reason,
            upstream_seconds=seconds,
            deployment=req.deployment,
        )

    def _read(self, parse: Callable[..., R], *data: Any) -> R:
        """``parse(*data)`` on what the provider sent. An answer the adapter cannot read (HTML from a
        proxy, a field of the wrong type) is the deployment's fault, not Janus's: a retryable 502,
        so the gateway falls back and the deployment's health suffers, instead of a 500. The cause
        is logged for the adapter's sake."""
        try:
            return parse(*data)
        except JanusError:
            raise
        except Exception as exc:
            log.warning(
                "upstream_unreadable",
                provider=self.ctx.provider.id,
                deployment=self.req.deployment,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            raise UpstreamError(
                f"provider {self.ctx.provider.id!r} sent a response that could not be read",
                code="upstream_unreadable",
            ) from exc

    def _passthrough(self, obj: openai.ChatCompletion, seconds: float) -> Done:
        req = self.req
        usage = openai.usage_of(obj.usage)
        if not (usage.prompt_tokens and usage.completion_tokens):
            size = 0
            for ch in obj.choices:
                size += openai.text_size(ch.message.content or "")
                for t in ch.message.tool_calls or ():
                    size += openai.text_size(t.function.arguments)
            usage = openai.with_fallback(usage, self._prompt_estimate, size)
        finish = obj.choices[0].finish_reason if obj.choices else None
        body = openai.rewrite_completion(obj, req.request_id, req.created, req.response_model, usage)
        return Done(
            seq=0,
            usage=usage,
            body=body,
            finish_reason=finish,
            upstream_seconds=seconds,
            deployment=req.deployment,
        )

    async def _embeddings(self) -> Done:
        req, body = self.req, self.ctx.embeddings
        inputs = _inputs(body, self.ctx.provider.id, self.adapter.capabilities.token_input)
        if self.local:
            result = await self.adapter.embed(self.ctx, inputs)
            vectors, prompt_tokens = result.vectors, result.usage.prompt_tokens
        else:
            step = batch_limit(self.adapter, self.ctx)
            batches = [inputs[i : i + step] for i in range(0, len(inputs), step)]
            # a provider that takes one text a call (Titan) must not get hundreds of calls at once
            gate = asyncio.Semaphore(EMBED_CONCURRENCY)

            failed: list[BaseException] = []

            async def one(batch: list[EmbedInput]) -> Any:
                async with gate:
                    if failed:
                        return None  # another batch failed: this one is not asked for
                    try:
                        up = self.adapter.embeddings_request(self.ctx, batch)
                        raw = await self.transport.fetch(up, self.adapter)
                        res = self._read(self.adapter.parse_embeddings, raw)
                    except Exception as exc:
                        failed.append(exc)
                        raise
                self._embedded += res.usage.prompt_tokens or sum(input_tokens(t) for t in batch)
                return res

            # gather keeps the batches' order, so the vectors line up with the inputs; a failure
            # lets the calls in flight finish (the provider bills them, usage_so_far charges them)
            # and starts no more
            outcomes = await asyncio.gather(*(one(b) for b in batches), return_exceptions=True)
            if failed:
                raise failed[0]
            results: list[Any] = list(outcomes)
            vectors = [v for res in results for v in res.vectors]
            prompt_tokens = sum(res.usage.prompt_tokens for res in results)
        if len(vectors) != len(inputs):
            raise JanusError(f"the provider returned {len(vectors)} embeddings for {len(inputs)} inputs")
        if not prompt_tokens:
            prompt_tokens = sum(input_tokens(t) for t in inputs)
        usage = Usage(prompt_tokens=prompt_tokens)
        out = openai.embeddings_body(vectors, req.response_model, prompt_tokens, body.encoding_format)
        return Done(
            seq=0, usage=usage, body=out, upstream_seconds=self.upstream_seconds(), deployment=req.deployment
        )


def failed_frame(call: Call | None, err: JanusError) -> Failed:
    if call is None:
        return Failed(seq=0, error=err.to_wire())
    return Failed(
        seq=0,
        error=err.to_wire(),
        usage=call.usage_so_far(),
        produced=call.produced,
        upstream_seconds=call.upstream_seconds(),
    )
