"""The provider clients: plain I/O, keyed by the provider names of the catalog (routing.models.Provider)."""

from collections.abc import Callable

from . import anthropic, ollama
from .base import Call, Completion, CompletionRequest, ProviderError

RUNNERS: dict[str, Callable[[CompletionRequest], Completion]] = {
    "anthropic": anthropic.complete,
    "ollama": ollama.complete,
}


def provider_model_id(provider: str, model_id: str) -> str:
    return ollama.provider_model_id(model_id) if provider == "ollama" else model_id


__all__ = ["RUNNERS", "Call", "Completion", "CompletionRequest", "ProviderError", "provider_model_id"]
