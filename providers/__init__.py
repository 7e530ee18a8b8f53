"""The provider clients: plain I/O, keyed by the provider names of the catalog (routing.models.Provider)."""

from collections.abc import Callable, Coroutine
from typing import Any

from . import aio, anthropic, ollama
from .base import Call, Completion, CompletionRequest, ProviderError

RUNNERS: dict[str, Callable[[CompletionRequest], Completion]] = {
    "anthropic": anthropic.complete,
    "ollama": ollama.complete,
}


# The runners that are coroutines, for a caller that waits on many calls at once (providers.aio).
ASYNC_RUNNERS: dict[str, Callable[[CompletionRequest], Coroutine[Any, Any, Completion]]] = {
    "anthropic": anthropic.complete_async,
}


def provider_model_id(provider: str, model_id: str) -> str:
    return ollama.provider_model_id(model_id) if provider == "ollama" else model_id


__all__ = [
    "ASYNC_RUNNERS",
    "aio",
    "RUNNERS",
    "Call",
    "Completion",
    "CompletionRequest",
    "ProviderError",
    "provider_model_id",
]
