"""Local models through Ollama's HTTP API: POST /api/chat with "stream": false (its default is NDJSON
streaming), the model id without our "ollama/" prefix."""

import threading

import requests
from django.conf import settings

from .base import Completion, CompletionRequest, ProviderError, checked_tokens, retry_after_secs

PREFIX = "ollama/"
_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def provider_model_id(model_id: str) -> str:
    return model_id[len(PREFIX) :] if model_id.startswith(PREFIX) else model_id


def _error_text(response) -> str:
    try:
        return str(response.json().get("error") or response.reason)
    except ValueError:
        return response.reason or f"HTTP {response.status_code}"


def complete(request: CompletionRequest) -> Completion:
    body = {
        "model": request.model,
        "messages": [
            {"role": "system", "content": request.system},
            {"role": "user", "content": request.message},
        ],
        "stream": False,
        "options": {"num_predict": request.max_tokens},
    }
    connect = min(settings.PROVIDER_CONNECT_TIMEOUT_SECS, request.timeout)
    try:
        response = _session().post(
            f"{settings.OLLAMA_BASE_URL}/api/chat", json=body, timeout=(connect, request.timeout)
        )
    except requests.exceptions.ReadTimeout as exc:
        raise ProviderError("timeout", "The provider did not answer in time.") from exc
    except requests.exceptions.RequestException as exc:
        raise ProviderError(
            "provider_unavailable", f"Ollama is unreachable: {exc.__class__.__name__}.", retriable=True
        ) from exc
    status = response.status_code
    if status == 404:
        raise ProviderError("model_not_found", _error_text(response))
    if status == 429:
        raise ProviderError(
            "provider_rate_limited",
            _error_text(response),
            retriable=True,
            retry_after=retry_after_secs(response.headers),
        )
    if status >= 500:
        raise ProviderError(
            "provider_unavailable",
            _error_text(response),
            retriable=True,
            retry_after=retry_after_secs(response.headers),
        )
    if status in (401, 403):
        raise ProviderError("provider_auth", _error_text(response))
    if status >= 400:
        raise ProviderError("provider_bad_request", _error_text(response))
    try:
        data = response.json()
        text = data["message"]["content"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProviderError("invalid_provider_usage", "Ollama's answer could not be read.") from exc
    # Ollama leaves prompt_eval_count out when the whole prompt came from its cache.
    input_tokens, output_tokens = checked_tokens(data.get("prompt_eval_count", 0), data.get("eval_count"))
    return Completion(text=str(text), input_tokens=input_tokens, output_tokens=output_tokens)
