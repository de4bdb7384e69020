"""The client's OpenAI request, typed: the one shape the gateway validates and the worker translates.

    client JSON --gateway: decode_chat (refuse, estimate, route)--> WorkRequest.body (the same bytes)
                --worker: decode_chat--> ChatRequest --adapter--> the provider's request

The gateway forwards the client's bytes unchanged, so the bus carries the prompt once and a newer or
older worker reads it as the client wrote it; both services decode those bytes with the decoders
below, so what the worker translates is exactly what the gateway checked and priced. The Structs
declare every field Janus reads or translates; the decoder skips the rest, which reach an
OpenAI-compatible provider through the raw body (``services.worker.policy.passthrough``).

A ``msgspec.ValidationError`` becomes ``InvalidRequest`` with ``param`` set to the field's path
(``messages[0].role``), the way OpenAI names it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared import tokens
from shared.errors import InvalidRequest

PositiveInt = Annotated[int, Meta(ge=1)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
# a number keeps its JSON type on its way through: a provider is sent ``1`` where the client sent 1
Temperature = Annotated[int, Meta(ge=0, le=2)] | Annotated[float, Meta(ge=0, le=2)]
Fraction = Annotated[int, Meta(ge=0, le=1)] | Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[int, Meta(ge=-2, le=2)] | Annotated[float, Meta(ge=-2, le=2)]


# ------------------------------------------------------------------------------------------ messages
class _AsSent(msgspec.Struct, omit_defaults=True):
    """A piece a provider that takes OpenAI's content parts (Cohere) is sent as it is: encoded, it
    holds only the fields the client gave."""


class ImageURL(_AsSent):
    url: str
    detail: str | None = None


class InputAudio(_AsSent):
    data: str = ""
    format: str = ""


class FileData(_AsSent):
    file_data: str | None = None
    filename: str | None = None


class Part(_AsSent):
    """One content part."""

    type: str
    text: str | None = None
    image_url: ImageURL | None = None
    input_audio: InputAudio | None = None
    file: FileData | None = None


class FunctionCall(msgspec.Struct):
    name: str = ""
    arguments: str = ""  # JSON text, as OpenAI sends it


class ToolCall(msgspec.Struct):
    id: str | None = None
    type: str = "function"
    function: FunctionCall | None = None


class Message(msgspec.Struct):
    role: Role
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None  # the legacy functions API's assistant turn


# ------------------------------------------------------------------------------------------- tools
class FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    # kept raw: the gateway reads only its size, and a provider is sent the schema as written
    parameters: msgspec.Raw = msgspec.Raw(b"")
    strict: bool | None = None


class Tool(msgspec.Struct):
    type: str = "function"
    function: FunctionDef | None = None


class FunctionName(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    type: str = "function"
    function: FunctionName | None = None


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class JSONSchemaFormat(msgspec.Struct):
    name: str | None = None
    schema: msgspec.Raw = msgspec.Raw(b"")
    strict: bool | None = None


class ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


# ---------------------------------------------------------------------------------------- requests
class ChatRequest(msgspec.Struct):
    messages: Annotated[list[Message], Meta(min_length=1)]
    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Fraction | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    # absent and null differ: the worker replaces a given one with the caller's opaque id
    user: str | UnsetType | None = UNSET
    safety_identifier: str | UnsetType | None = UNSET
    tools: list[Tool] | None = None
    functions: list[FunctionDef] | None = None  # the legacy form of ``tools``
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # cost options a client must not choose on the operator's account (the gateway refuses them)
    service_tier: str | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    audio: msgspec.Raw = msgspec.Raw(b"")  # raw: only whether it is given matters
    web_search_options: msgspec.Raw = msgspec.Raw(b"")  # raw: only whether it is given matters
    prediction: msgspec.Raw = msgspec.Raw(b"")  # raw: only whether it is given matters

    @property
    def output_cap(self) -> int | None:
        """The client's cap: ``max_completion_tokens`` wins over the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and bool(self.stream_options.include_usage)

    @property
    def stop_sequences(self) -> list[str]:
        stop = self.stop
        if not stop:
            return []
        return [stop] if isinstance(stop, str) else [s for s in stop if s]


class EmbeddingsRequest(msgspec.Struct):
    model: str
    # one union may hold only one array type, so the shapes (strings, tokens, token arrays) are
    # told apart after decoding, by ``embedding_inputs``
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | UnsetType | None = UNSET


MAX_EMBEDDING_INPUTS = 2048

# one embeddings input: a text, or a list of token ids
EmbedInput = str | list[int]


def embedding_inputs(req: EmbeddingsRequest) -> tuple[list[EmbedInput], int]:
    """The inputs (a string, or a single token array, is one input) and their estimated tokens,
    after OpenAI's checks: nothing empty, at most ``MAX_EMBEDDING_INPUTS``, one shape throughout."""
    inp = req.input
    if isinstance(inp, str):
        if not inp:
            raise InvalidRequest("'input' cannot be an empty string.", param="input", code="invalid_value")
        return [inp], tokens.estimate_text(inp)
    if not inp:
        raise InvalidRequest("'input' cannot be an empty array.", param="input", code="invalid_value")
    if len(inp) > MAX_EMBEDDING_INPUTS:
        # OpenAI's own limit; it also bounds the upstream calls and the answer one request makes
        raise InvalidRequest(
            f"'input' can hold at most {MAX_EMBEDDING_INPUTS} items; this one has {len(inp)}. "
            "Split it across requests.",
            param="input",
            code="invalid_value",
        )
    first = inp[0]
    kind = str if isinstance(first, str) else int if isinstance(first, int) else list
    out: list[EmbedInput] = []
    ids: list[int] = []  # an array of integers is one input: a single token array
    for i, item in enumerate(inp):
        if not isinstance(item, kind):
            raise InvalidRequest(
                "'input' must be a string, an array of strings, an array of tokens or an array of "
                "token arrays, not a mix.",
                param=f"input[{i}]",
                code="invalid_value",
            )
        if isinstance(item, int):
            ids.append(item)
            continue
        if not item:
            what = "string" if isinstance(item, str) else "token array"
            raise InvalidRequest(
                f"'input' cannot contain an empty {what}.", param=f"input[{i}]", code="invalid_value"
            )
        out.append(item)
    if ids:
        return [ids], len(ids)
    return out, sum(input_tokens(t) for t in out)


def input_tokens(item: EmbedInput) -> int:
    """The tokens of one embeddings input: estimated for a text, exact for token ids."""
    return tokens.estimate_text(item) if isinstance(item, str) else len(item)


# -------------------------------------------------------------------------------------- decoding
_chat_decoder = msgspec.json.Decoder(ChatRequest)
_embeddings_decoder = msgspec.json.Decoder(EmbeddingsRequest)
_members_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _invalid(exc: msgspec.ValidationError) -> InvalidRequest:
    text = str(exc)
    m = _PATH.search(text)
    path = m.group("path") if m else ""
    message = text[: m.start()] if m else text
    found = _MISSING.match(message)
    if found:
        return missing(f"{path}.{found.group('field')}" if path else found.group("field"))
    if path:
        message = f"Invalid value for '{path}': {message}."
    return InvalidRequest(message, param=path or None, code="invalid_value")


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except RecursionError:
        # msgspec's depth limit is the interpreter's recursion limit (about 1,000 levels)
        raise InvalidRequest("The JSON body is nested too deeply.", code="invalid_json") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec raises UnicodeDecodeError (not DecodeError) for bytes that are not UTF-8
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None


def decode_chat(body: bytes) -> ChatRequest:
    result: ChatRequest = _decode(_chat_decoder, body)
    return result


def decode_embeddings(body: bytes) -> EmbeddingsRequest:
    result: EmbeddingsRequest = _decode(_embeddings_decoder, body)
    return result


def members(body: bytes) -> dict[str, Any]:
    """The top-level members of a body already decoded above, each value kept as the client's bytes:
    members are replaced, added or dropped and the body encoded again without rebuilding any nested
    value (the cost of a pass-through stays that of copying it)."""
    doc: dict[str, Any] = _members_decoder.decode(body)
    return doc
