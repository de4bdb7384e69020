"""The adapter registry: the catalog's provider ``kind`` -> the adapter class that speaks it.

Every adapter module is imported here, so a broken one fails the worker (and the conformance
battery) at import, loudly, instead of quietly dropping its provider. The worker refuses at startup
to serve a provider whose kind has no adapter.
"""

from __future__ import annotations

from services.worker.adapters.anthropic import AnthropicAdapter
from services.worker.adapters.base import Adapter, LocalAdapter
from services.worker.adapters.bedrock import BedrockAdapter
from services.worker.adapters.cohere import CohereAdapter
from services.worker.adapters.fake import FakeAdapter
from services.worker.adapters.gemini import GeminiAdapter
from services.worker.adapters.ollama import OllamaAdapter
from services.worker.adapters.openai_compat import OpenAICompatAdapter

AdapterClass = type[Adapter] | type[LocalAdapter]


def _registry(*classes: AdapterClass) -> dict[str, AdapterClass]:
    out: dict[str, AdapterClass] = {}
    for cls in classes:
        if cls.kind in out:
            raise TypeError(
                f"two adapters claim provider kind {cls.kind!r}: {out[cls.kind].__name__}, {cls.__name__}"
            )
        out[cls.kind] = cls
    return out


ADAPTERS = _registry(
    FakeAdapter,
    OpenAICompatAdapter,
    AnthropicAdapter,
    GeminiAdapter,
    BedrockAdapter,
    OllamaAdapter,
    CohereAdapter,
)
