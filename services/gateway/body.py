"""Validation of request bodies, and what the gateway needs to know from them.

The client's bytes are forwarded to the worker unchanged, so the Structs here declare only the fields
the gateway checks or reads; every other OpenAI parameter passes through untouched (unknown fields are
allowed). Decoders are built once. A ``msgspec.ValidationError`` becomes ``InvalidRequest`` with
``param`` set to the field path (``messages[0].role``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared import prompt, tokens
from shared.catalog import Defaults, Model
from shared.errors import InvalidRequest

PositiveInt = Annotated[int, Meta(ge=1)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(prompt.Message):
    role: Role
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class JSONSchemaFormat(msgspec.Struct):
    schema: msgspec.Raw = msgspec.Raw(b"")


class ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class FunctionName(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    type: str = "function"
    function: FunctionName | None = None


class ChatRequest(msgspec.Struct):
    messages: Annotated[list[Message], Meta(min_length=1)]
    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    tools: list[prompt.Tool] | None = None
    functions: list[prompt.FunctionDef] | None = None  # the legacy form of ``tools``
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # cost options a client must not choose on the operator's account (see ``_policy``)
    service_tier: str | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    audio: msgspec.Raw = msgspec.Raw(b"")  # raw: only whether it is given matters
    web_search_options: msgspec.Raw = msgspec.Raw(b"")  # raw: only whether it is given matters
    prediction: msgspec.Raw = msgspec.Raw(b"")  # raw: only whether it is given matters


class EmbeddingsRequest(msgspec.Struct):
    model: str
    # one union may hold only one array type, so the shapes (strings, tokens, token arrays) are
    # told apart after decoding
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None


MAX_EMBEDDING_INPUTS = 2048

_chat_decoder = msgspec.json.Decoder(ChatRequest)
_embeddings_decoder = msgspec.json.Decoder(EmbeddingsRequest)

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def _invalid(exc: msgspec.ValidationError) -> InvalidRequest:
    text = str(exc)
    m = _PATH.search(text)
    path = m.group("path") if m else ""
    message = text[: m.start()] if m else text
    missing = _MISSING.match(message)
    if missing:
        return _missing(f"{path}.{missing.group('field')}" if path else missing.group("field"))
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
        raise InvalidRequest(
            "The JSON body is nested too deeply.", code="invalid_json") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec raises UnicodeDecodeError (not DecodeError) for bytes that are not UTF-8
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                          code="missing_required_parameter")


def _json_object(raw: msgspec.Raw, param: str) -> None:
    """A JSON Schema kept raw (its size is all the gateway reads) must still be an object."""
    if raw and not bytes(raw).lstrip().startswith(b"{"):
        raise InvalidRequest(f"Invalid value for '{param}': expected a JSON Schema object.",
                             param=param, code="invalid_value")


class ChatFacts(msgspec.Struct):
    """What routing and admission need from a chat request."""

    request: ChatRequest
    prompt_tokens: int
    needs_tools: bool
    needs_vision: bool
    needs_json: bool

    def prompt_text(self, limit: int = 16_384) -> str:
        """The users' text for the auto policy: the most recent ``limit`` characters."""
        parts: list[str] = []
        for m in self.request.messages:
            if m.role != "user" or m.content is None:
                continue
            if isinstance(m.content, str):
                parts.append(m.content)
            else:
                parts.extend(p.text for p in m.content if p.text)
        text = "\n".join(parts)
        return text[-limit:]

    def output_cap(self, model: Model | None, name: str, default: int) -> int:
        """The output cap per choice, held and sent upstream: the client's, or ``default``, never
        above the model's limit nor the room its context leaves beside the prompt. A client cap above
        the model's limit is refused, as OpenAI refuses it; the context room is clamped, not refused,
        because the prompt's size is only an estimate."""
        r = self.request
        asked = r.max_completion_tokens or r.max_tokens
        if model is None:
            return asked or default
        if asked is not None and asked > model.max_output_tokens:
            param = "max_completion_tokens" if r.max_completion_tokens else "max_tokens"
            raise InvalidRequest(
                f"'{param}' is too large: {asked}. {name} supports at most {model.max_output_tokens} "
                "completion tokens.", param=param, code="invalid_value")
        room = max(1, model.context_window - self.prompt_tokens)
        return min(asked or default, model.max_output_tokens, room)


# service tiers that cost no more than the price the catalog holds: the operator's own default
_TIERS = (None, "auto", "default")


def _given(raw: msgspec.Raw) -> bool:
    return bool(raw) and bytes(raw) != b"null"


def _policy(req: ChatRequest) -> None:
    """Refuse the options that would make the provider charge more than the hold covers (audio
    output, web search, a priority tier, rejected predictions billed as output) or keep the
    conversation on the operator's account. The worker strips the rest (``services.worker.policy``)."""
    refused: tuple[str, str] | None = None
    if req.service_tier not in _TIERS:
        refused = "service_tier", "Only the default service tier is available ('auto' or 'default')."
    elif req.store:
        refused = "store", "Completions cannot be stored with the provider through this API."
    elif _given(req.audio) or (req.modalities and any(m != "text" for m in req.modalities)):
        refused = ("audio" if _given(req.audio) else "modalities"), "Only text output is available."
    elif _given(req.web_search_options):
        refused = "web_search_options", "Web search is not available through this API."
    elif _given(req.prediction):
        refused = "prediction", "Predicted outputs are not available through this API."
    if refused is not None:
        param, why = refused
        raise InvalidRequest(f"Unsupported parameter: '{param}'. {why}", param=param,
                             code="unsupported_parameter")


def parse_chat(body: bytes) -> ChatFacts:
    req: ChatRequest = _decode(_chat_decoder, body)
    _policy(req)
    if req.stream and req.n is not None and req.n > 1:
        raise InvalidRequest("'n' above 1 cannot be streamed; ask for one choice or turn streaming off.",
                             param="n", code="invalid_value")
    vision = False
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.type == "text" and part.text is None:
                    # OpenAI requires the text of a text part; providers choke on a null
                    raise InvalidRequest("A 'text' content part needs a 'text' string.",
                                         param=f"messages[{i}].content[{j}].text", code="invalid_value")
                if not part.text and part.type in ("image_url", "input_image"):
                    vision = True
                    if part.type == "image_url" and part.image_url is None:
                        raise InvalidRequest(
                            "An 'image_url' content part needs an 'image_url' object with a 'url'.",
                            param=f"messages[{i}].content[{j}].image_url", code="invalid_value")
        if m.role == "tool" and m.tool_call_id is None:
            raise _missing(f"messages[{i}].tool_call_id")
    for i, tool in enumerate(req.tools or ()):
        f = tool.function
        if f is not None:
            _json_object(f.parameters, f"tools[{i}].function.parameters")
        elif tool.type == "function":
            raise _missing(f"tools[{i}].function")
    for i, f in enumerate(req.functions or ()):
        _json_object(f.parameters, f"functions[{i}].parameters")
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.type == "function" and choice.function is None:
        raise _missing("tool_choice.function")
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise _missing("response_format.json_schema")
        _json_object(fmt.json_schema.schema, "response_format.json_schema.schema")
    return ChatFacts(
        request=req,
        prompt_tokens=prompt.estimate(req.messages, req.tools, req.functions),
        needs_tools=bool(req.tools or req.functions),
        needs_vision=vision,
        needs_json=fmt is not None and fmt.type != "text",
    )


def with_defaults(body: bytes, req: ChatRequest, defaults: Defaults) -> bytes:
    """``body`` with the model's default sampling parameters where the client left them out (or sent
    null, which OpenAI reads as "the default"). Re-encoded only when something is filled in."""
    missing = {k: v for k in Defaults.__struct_fields__
               if (v := getattr(defaults, k)) is not None and getattr(req, k) is None}
    if not missing:
        return body
    doc = msgspec.json.decode(body)
    doc.update(missing)
    return msgspec.json.encode(doc)


def parse_embeddings(body: bytes) -> tuple[EmbeddingsRequest, int]:
    """The request and its estimated input tokens."""
    req: EmbeddingsRequest = _decode(_embeddings_decoder, body)
    inp = req.input
    if isinstance(inp, str):
        if not inp:
            raise InvalidRequest("'input' cannot be an empty string.", param="input", code="invalid_value")
        return req, tokens.estimate_text(inp)
    if not inp:
        raise InvalidRequest("'input' cannot be an empty array.", param="input", code="invalid_value")
    if len(inp) > MAX_EMBEDDING_INPUTS:
        # OpenAI's own limit; it also bounds the upstream calls and the answer one request makes
        raise InvalidRequest(
            f"'input' can hold at most {MAX_EMBEDDING_INPUTS} items; this one has {len(inp)}. "
            "Split it across requests.", param="input", code="invalid_value",
        )
    first = inp[0]
    kind = str if isinstance(first, str) else int if isinstance(first, int) else list
    total = 0
    for i, item in enumerate(inp):
        if not isinstance(item, kind):
            raise InvalidRequest(
                "'input' must be a string, an array of strings, an array of tokens or an array of "
                "token arrays, not a mix.", param=f"input[{i}]", code="invalid_value",
            )
        if isinstance(item, str):
            if not item:
                raise InvalidRequest("'input' cannot contain an empty string.", param=f"input[{i}]",
                                     code="invalid_value")
            total += tokens.estimate_text(item)
        elif isinstance(item, list):
            if not item:
                raise InvalidRequest("'input' cannot contain an empty token array.", param=f"input[{i}]",
                                     code="invalid_value")
            total += len(item)
        else:
            total += 1
    return req, total
