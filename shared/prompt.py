"""The prompt-token estimate: one count, made once at the gateway, for the hold and the fallback charge.

The gateway holds ``estimate`` + the output cap before a call; a worker whose provider reports no
usage charges the same estimate (it travels in ``WorkRequest.prompt_tokens``; a worker that gets
none makes it, ``estimate_request``, from the same typed request). So the hold and the charge never
disagree about the prompt, and the estimate's error against the provider's own count is the only
way a spend can pass its limit.

What is counted (text as ``shared.tokens`` counts it, one token per 3 characters, high on purpose):

- each message: ``PER_MESSAGE`` tokens, its text parts, ``name``, tool calls (name and arguments) and
  the legacy ``function_call``;
- an image part: a fixed allowance by ``detail`` (``IMAGE_TOKENS``), whatever its size in bytes,
  because providers scale an image down before counting it: OpenAI's tiles top out at 1,445 tokens
  for ``high`` and charge 85 for ``low``; Anthropic's largest image is about 1,600;
- an ``input_audio`` part: its decoded bytes at the lowest bit rate each format is sent at
  (``AUDIO_BYTES_PER_TOKEN``: 10 tokens a second at 8 kbps MP3 or 8 kHz 16-bit WAV);
- a ``file`` part: its data as text (a document is never cheaper than its bytes read as text);
- each tool and legacy ``functions`` entry: ``PER_TOOL`` tokens, its name, description and the
  JSON text of its parameter schema.

It reads the request's typed model (``shared.openai_request``), decoded once by each service.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.openai_request import ChatRequest, FunctionDef, Message, Part, Tool
from shared.tokens import CHARS_PER_TOKEN, PER_MESSAGE, PER_REPLY

PER_TOOL = 8
IMAGE_TOKENS = {"low": 85, "high": 1_600, "auto": 1_600}
IMAGE_DEFAULT = 1_600  # no ``detail``: OpenAI's default is "auto"
AUDIO_BYTES_PER_TOKEN = {"wav": 1_600, "mp3": 100}
AUDIO_DEFAULT_BYTES_PER_TOKEN = 100


def size(text: str) -> int:
    """Characters of ASCII text, else UTF-8 bytes (over-counting CJK rather than under-counting)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def _part(p: Part) -> tuple[int, int]:
    """(characters of text, tokens of media) of one content part."""
    if p.text:
        return size(p.text), 0
    if p.image_url is not None:
        detail = p.image_url.detail
        return 0, IMAGE_TOKENS.get(detail, IMAGE_DEFAULT) if detail else IMAGE_DEFAULT
    if p.input_audio is not None:
        audio = p.input_audio
        data = audio.data
        raw = len(data) * 3 // 4 - (len(data) - len(data.rstrip("=")))  # base64 padding
        per = AUDIO_BYTES_PER_TOKEN.get(audio.format, AUDIO_DEFAULT_BYTES_PER_TOKEN)
        return 0, -(-raw // per)
    if p.file is not None and p.file.file_data:
        return len(p.file.file_data), 0
    if p.type in ("image_url", "input_image"):
        return 0, IMAGE_DEFAULT
    return 0, 0


def _function(f: FunctionDef) -> int:
    chars = size(f.name) + (size(f.description) if f.description else 0) + len(f.parameters)
    return PER_TOOL + _tokens(chars)


def estimate(
    messages: Sequence[Message],
    tools: Sequence[Tool] | None = None,
    functions: Sequence[FunctionDef] | None = None,
) -> int:
    """The estimated prompt tokens of a chat request ."""
    total = PER_REPLY
    for m in messages:
        chars, media = 0, 0
        content = m.content
        if isinstance(content, str):
            chars = size(content)
        elif content is not None:
            for p in content:
                c, t = _part(p)
                chars += c
                media += t
        if m.name:
            chars += size(m.name)
        for call in m.tool_calls or ():
            if call.function is not None:
                chars += size(call.function.name) + size(call.function.arguments)
        if m.function_call is not None:
            chars += size(m.function_call.name) + size(m.function_call.arguments)
        total += PER_MESSAGE + _tokens(chars) + media
    for tool in tools or ():
        if tool.function is not None:
            total += _function(tool.function)
    for f in functions or ():
        total += _function(f)
    return total


def estimate_request(req: ChatRequest) -> int:
    return estimate(req.messages, req.tools, req.functions)
