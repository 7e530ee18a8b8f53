"""Claude models through the official anthropic SDK.

The SDK's own retries are off (max_retries=0) and every call carries its timeout, so backoff is ours
(runtime.execution) and no call outlives the run's deadline."""
import threading

import anthropic
from django.conf import settings

from .base import Completion, CompletionRequest, ProviderError, checked_tokens, retry_after_secs

_clients = {}
_lock = threading.Lock()


def _client() -> anthropic.Anthropic:
    key = (settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = anthropic.Anthropic(
                api_key=settings.ANTHROPIC_API_KEY,
                base_url=settings.ANTHROPIC_BASE_URL,
                max_retries=0,
                timeout=settings.RUN_TIMEOUT_CAP_SECS,
            )
            _clients[key] = client
        return client


def _classify(exc: anthropic.APIStatusError) -> ProviderError:
    message = exc.api_message or str(exc)
    if isinstance(exc, anthropic.EnforcedSpendLimitReachedError) or exc.error_code == "enforced_spend_limit_reached":
        return ProviderError("provider_spend_limit", message)
    if isinstance(exc, anthropic.RateLimitError):
        return ProviderError("provider_rate_limited", message, retriable=True, retry_after=retry_after_secs(exc.response.headers))
    if exc.status_code >= 500:
        return ProviderError("provider_unavailable", message, retriable=True, retry_after=retry_after_secs(exc.response.headers))
    if isinstance(exc, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
        return ProviderError("provider_auth", message)
    if isinstance(exc, anthropic.NotFoundError):
        return ProviderError("model_not_found", message)
    if exc.status_code == 408:
        return ProviderError("provider_unavailable", message, retriable=True)
    return ProviderError("provider_bad_request", message)


def complete(request: CompletionRequest) -> Completion:
    if not settings.ANTHROPIC_API_KEY:
        raise ProviderError("provider_not_configured", "ANTHROPIC_API_KEY is not set.")
    try:
        response = _client().messages.create(
            model=request.model,
            max_tokens=request.max_tokens,
            system=request.system,
            messages=[{"role": "user", "content": request.message}],
            timeout=request.timeout,
        )
    except anthropic.APITimeoutError as exc:
        raise ProviderError("timeout", "The provider did not answer in time.") from exc
    except anthropic.APIConnectionError as exc:
        raise ProviderError("provider_unavailable", str(exc), retriable=True) from exc
    except anthropic.APIStatusError as exc:
        raise _classify(exc) from exc
    except anthropic.APIResponseValidationError as exc:
        raise ProviderError("invalid_provider_usage", "The provider's answer could not be read.") from exc
    usage = getattr(response, "usage", None)
    if usage is None:
        raise ProviderError("invalid_provider_usage", "The provider's answer has no usage.")
    raw_input, cache_write, cache_read, output = checked_tokens(
        usage.input_tokens, usage.cache_creation_input_tokens or 0, usage.cache_read_input_tokens or 0, usage.output_tokens
    )
    text = "".join(block.text for block in (response.content or []) if getattr(block, "type", None) == "text")
    return Completion(text=text, input_tokens=raw_input + cache_write + cache_read, output_tokens=output)
