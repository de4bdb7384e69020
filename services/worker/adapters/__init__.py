"""The adapter registry: the catalog's provider ``kind`` -> the adapter class that speaks it.

Each adapter lives in its own module and is registered with one ``_register`` line. A module that
cannot be imported (absent, or broken) is logged and skipped, so one provider's problem never takes
the others down; the worker refuses at startup to serve a provider whose kind has no adapter.
"""

from __future__ import annotations

import importlib
from typing import Any

from shared.logging import get_logger

log = get_logger("worker.adapters")

ADAPTERS: dict[str, type[Any]] = {}


def _register(module: str, cls_name: str) -> None:
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
        cls = getattr(mod, cls_name)
    except Exception as exc:  # a broken provider module must not break the registry
        log.error("adapter_unavailable", module=module, error=f"{type(exc).__name__}: {exc}")
        return
    ADAPTERS[cls.kind] = cls


_register("fake", "FakeAdapter")
_register("openai_compat", "OpenAICompatAdapter")
_register("anthropic", "AnthropicAdapter")
_register("gemini", "GeminiAdapter")
_register("bedrock", "BedrockAdapter")
_register("ollama", "OllamaAdapter")
_register("cohere", "CohereAdapter")
