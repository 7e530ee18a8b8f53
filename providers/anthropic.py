"""Claude models through the official anthropic SDK.

The SDK's own retries are off (max_retries=0) and every call carries its timeout, so backoff is ours
(runs.execution) and no call outlives the run's deadline.

The SDK builds and sends the request, and turns an error status into its exception, which we map to
a CONTRACT code. A successful body we read ourselves (`with_raw_response`): we need its usage and
its text blocks, not the typed message the SDK would build from every field, which costs a worker
measurable CPU per run (bench/README.md). OpenTelemetry spans are off unless ANTHROPIC_OPEN_TELEMETRY
is set: without an exporter configured they record nothing and still cost CPU."""

import json
import threading

import anthropic
from django.conf import settings

from .base import Completion, CompletionRequest, ProviderError, checked_tokens, retry_after_secs

_clients: dict[tuple[str, str | None, bool], anthropic.Anthropic] = {}  # by (key, base URL, telemetry)
_lock = threading.Lock()


def _client() -> anthropic.Anthropic:
    key = (settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL, settings.ANTHROPIC_OPEN_TELEMETRY)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = anthropic.Anthropic(
                api_key=settings.ANTHROPIC_API_KEY,
                base_url=settings.ANTHROPIC_BASE_URL,
                max_retries=0,
                timeout=settings.RUN_TIMEOUT_CAP_SECS,
                open_telemetry=None
                if settings.ANTHROPIC_OPEN_TELEMETRY
                else False,  # None: the SDK reads its env
            )
            _clients[key] = client
        return client


def _classify(exc: anthropic.APIStatusError) -> ProviderError:
    message = exc.api_message or str(exc)
    if (
        isinstance(exc, anthropic.EnforcedSpendLimitReachedError)
        or exc.error_code == "enforced_spend_limit_reached"
    ):
        return ProviderError("provider_spend_limit", message)
    if isinstance(exc, anthropic.RateLimitError):
        return ProviderError(
            "provider_rate_limited",
            message,
            retriable=True,
            retry_after=retry_after_secs(exc.response.headers),
        )
    if exc.status_code >= 500:
        return ProviderError(
            "provider_unavailable",
            message,
            retriable=True,
            retry_after=retry_after_secs(exc.response.headers),
        )
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
        response = _client().messages.with_raw_response.create(
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
    return _completion(response.http_response.content)


def _completion(body: bytes) -> Completion:
    """The text and the token counts of a Messages API answer (the input counts the cache writes and
    reads), or ProviderError(invalid_provider_usage) when its body has no readable usage or text."""
    try:
        message = json.loads(body)
        usage = message["usage"]
        cache_write, cache_read = (
            usage.get("cache_creation_input_tokens"),
            usage.get("cache_read_input_tokens"),
        )
        counts = (
            usage["input_tokens"],
            0 if cache_write is None else cache_write,  # absent or null: none; anything else is checked
            0 if cache_read is None else cache_read,
            usage["output_tokens"],
        )
        text = "".join(block["text"] for block in message.get("content") or () if block.get("type") == "text")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProviderError("invalid_provider_usage", "The provider's answer could not be read.") from exc
    raw_input, cache_write, cache_read, output = checked_tokens(*counts)
    return Completion(text=text, input_tokens=raw_input + cache_write + cache_read, output_tokens=output)
