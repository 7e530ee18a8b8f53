"""The runner for each provider of the catalog."""

from routing.models import Provider

from . import anthropic, ollama
from .base import Completion, CompletionRequest, ProviderError

RUNNERS = {Provider.ANTHROPIC: anthropic.complete, Provider.OLLAMA: ollama.complete}


def provider_model_id(provider: str, model_id: str) -> str:
    return ollama.provider_model_id(model_id) if provider == Provider.OLLAMA else model_id


__all__ = ["RUNNERS", "Completion", "CompletionRequest", "ProviderError", "provider_model_id"]
