"""What the gateway decides from a request body: the checks OpenAI's schema alone cannot express,
the cost options it refuses, and what routing and admission need to know.

The body is decoded once with the typed model in ``shared.openai_request`` (the worker reads the same
bytes with the same decoder); the client's bytes are forwarded to the worker unchanged, so every
OpenAI parameter the model does not declare passes through untouched.
"""

from __future__ import annotations

import msgspec

from shared import prompt
from shared.catalog import Defaults, Model
from shared.errors import InvalidRequest
from shared.openai_request import (
    ChatRequest,
    EmbeddingsRequest,
    NamedToolChoice,
    decode_chat,
    decode_embeddings,
    embedding_inputs,
    members,
    missing,
)


def _json_object(raw: msgspec.Raw, param: str) -> None:
    """A JSON Schema kept raw (its size is all the gateway reads) must still be an object."""
    if raw and not bytes(raw).lstrip().startswith(b"{"):
        raise InvalidRequest(
            f"Invalid value for '{param}': expected a JSON Schema object.", param=param, code="invalid_value"
        )


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
        asked = r.output_cap
        if model is None:
            return asked or default
        if asked is not None and asked > model.max_output_tokens:
            param = "max_completion_tokens" if r.max_completion_tokens else "max_tokens"
            raise InvalidRequest(
                f"'{param}' is too large: {asked}. {name} supports at most {model.max_output_tokens} "
                "completion tokens.",
                param=param,
                code="invalid_value",
            )
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
        raise InvalidRequest(
            f"Unsupported parameter: '{param}'. {why}", param=param, code="unsupported_parameter"
        )


def parse_chat(body: bytes) -> ChatFacts:
    req = decode_chat(body)
    _policy(req)
    if req.stream and req.n is not None and req.n > 1:
        raise InvalidRequest(
            "'n' above 1 cannot be streamed; ask for one choice or turn streaming off.",
            param="n",
            code="invalid_value",
        )
    vision = False
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.type == "text" and part.text is None:
                    # OpenAI requires the text of a text part; providers choke on a null
                    raise InvalidRequest(
                        "A 'text' content part needs a 'text' string.",
                        param=f"messages[{i}].content[{j}].text",
                        code="invalid_value",
                    )
                if not part.text and part.type in ("image_url", "input_image"):
                    vision = True
                    if part.type == "image_url" and part.image_url is None:
                        raise InvalidRequest(
                            "An 'image_url' content part needs an 'image_url' object with a 'url'.",
                            param=f"messages[{i}].content[{j}].image_url",
                            code="invalid_value",
                        )
        if m.role == "tool" and m.tool_call_id is None:
            raise missing(f"messages[{i}].tool_call_id")
    for i, tool in enumerate(req.tools or ()):
        f = tool.function
        if f is not None:
            _json_object(f.parameters, f"tools[{i}].function.parameters")
        elif tool.type == "function":
            raise missing(f"tools[{i}].function")
    for i, f in enumerate(req.functions or ()):
        _json_object(f.parameters, f"functions[{i}].parameters")
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.type == "function" and choice.function is None:
        raise missing("tool_choice.function")
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise missing("response_format.json_schema")
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
    filled = {
        k: v
        for k in Defaults.__struct_fields__
        if (v := getattr(defaults, k)) is not None and getattr(req, k) is None
    }
    if not filled:
        return body
    doc = members(body)
    doc.update(filled)
    return msgspec.json.encode(doc)


def parse_embeddings(body: bytes) -> tuple[EmbeddingsRequest, int]:
    """The request and its estimated input tokens."""
    req = decode_embeddings(body)
    return req, embedding_inputs(req)[1]
