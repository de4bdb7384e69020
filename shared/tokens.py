"""Token estimates for admission, made without a tokenizer download.

No tokenizer can be fetched at run time here, so the estimate is deliberately high: OpenAI-family
BPE tokenizers average about 4 characters of English per token and rarely fewer than ~2.5; we count
one token per 3 characters of UTF-8 text (plus a per-message overhead of 4 tokens, as OpenAI's
cookbook counts for chat formatting), and non-ASCII text is counted by its UTF-8 byte length, which
over-counts CJK scripts rather than under-counting them. Over-estimating only makes the hold larger;
settlement always uses the provider's reported usage.
"""

from __future__ import annotations

PER_MESSAGE = 4
PER_REPLY = 3
CHARS_PER_TOKEN = 3


def estimate_text(text: str) -> int:
    if text.isascii():
        n = len(text)
    else:
        n = len(text.encode("utf-8"))
    return -(-n // CHARS_PER_TOKEN)


def estimate_messages(texts_per_message: list[int]) -> int:
    """``texts_per_message``: the character/byte count of each message's text (already summed)."""
    return PER_REPLY + sum(PER_MESSAGE + -(-n // CHARS_PER_TOKEN) for n in texts_per_message)
