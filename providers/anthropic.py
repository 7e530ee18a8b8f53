"""Claude models through the official anthropic SDK.

The SDK's own retries are off (max_retries=0) and every call carries its timeout, so backoff is ours
(runs.execution) and no call outlives the run's deadline.

The SDK builds and sends the request and turns an error status into its exception, which we map to
a CONTRACT code. Calls stream (`create(stream=True)`): each text fragment goes to the call's
`on_delta` as it arrives, the input usage (with cache writes and reads) comes from message_start and
the output usage from the last message_delta, and closing the call (a cancel) cancels it, which closes its
connection. OpenTelemetry spans are off unless ANTHROPIC_OPEN_TELEMETRY is set: without an exporter
configured they record nothing and still cost CPU.

The calls are coroutines on the process's provider loop (providers.aio): a call waiting on its
provider holds a task and its connection, not a thread, nor a read buffer (asyncio reads only
what has arrived). They go out through the SDK's aiohttp transport (DefaultAioHttpClient), whose
parser is C and which runs on asyncio itself, where httpx's async transport goes through anyio:
about a third less CPU per call (bench/README.md). Closing a call drops its connection
(_drop_connection) rather than closing it as aiohttp would, politely, which for TLS waits for the
provider's own close while the provider may go on generating."""

import asyncio
import atexit
import itertools
import threading

import anthropic
import httpx2
from django.conf import settings

from . import aio
from .base import Call, Completion, CompletionRequest, ProviderError, checked_tokens, retry_after_secs

# The SDK's async clients, by (loop, key, base URL, telemetry, shard), all on the process's provider
# loop (providers.aio), where a call waiting on its provider holds no thread. A worker holds hundreds
# of calls at once, and a client's connection pool looks over all of its connections whenever a
# request takes one or gives one back: calls are dealt out to SHARDS clients in turn, so each pool
# holds a share of the connections. The clients share one TLS context (its certificates loaded once).
SHARDS = 64
_clients: dict[tuple, anthropic.AsyncAnthropic] = {}
_lock = threading.Lock()
_turns = itertools.count()
_tls: list = []


def _client() -> anthropic.AsyncAnthropic:
    key = (
        aio.loop(),
        settings.ANTHROPIC_API_KEY,
        settings.ANTHROPIC_BASE_URL,
        settings.ANTHROPIC_OPEN_TELEMETRY,
        next(_turns) % SHARDS,
    )
    with _lock:
        client = _clients.get(key)
        if client is None:
            if not _tls:
                _tls.append(httpx2.create_ssl_context())
            client = anthropic.AsyncAnthropic(
                api_key=settings.ANTHROPIC_API_KEY,
                base_url=settings.ANTHROPIC_BASE_URL,
                max_retries=0,
                timeout=settings.RUN_TIMEOUT_CAP_SECS,
                open_telemetry=None
                if settings.ANTHROPIC_OPEN_TELEMETRY
                else False,  # None: the SDK reads its env
                http_client=anthropic.DefaultAioHttpClient(verify=_tls[0]),
            )
            _clients[key] = client
        return client


def warm_up() -> None:
    """Make every shard's client now (a worker starting) rather than during its first calls."""
    if settings.ANTHROPIC_API_KEY:
        for _ in range(SHARDS):
            _client()


@atexit.register
def _close_clients() -> None:
    """Close this process's clients on its loop at exit, as aiohttp asks (it logs an error for each
    session collected open). A forked child's copies of its parent's clients belong to no running
    loop and are left alone."""
    loop = aio.started()
    with _lock:
        clients = [client for (owner, *_), client in _clients.items() if owner is loop]
        _clients.clear()
    if loop is None or not clients:
        return

    async def close_all() -> None:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=2)
    except Exception:  # exiting: a session left open costs only that log line
        pass


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


_STREAM_ERRORS = {  # an error event's type (its status, 200, says nothing): code, retriable
    "overloaded_error": ("provider_unavailable", True),
    "api_error": ("provider_unavailable", True),
    "rate_limit_error": ("provider_rate_limited", True),
    "invalid_request_error": ("provider_bad_request", False),
    "authentication_error": ("provider_auth", False),
    "permission_error": ("provider_auth", False),
    "not_found_error": ("model_not_found", False),
}


def _stream_error(data) -> ProviderError:
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, dict) else {}
    code, retriable = _STREAM_ERRORS.get(str(error.get("type")), ("provider_unavailable", True))
    return ProviderError(
        code, str(error.get("message") or "The stream reported an error."), retriable=retriable
    )


def complete(request: CompletionRequest) -> Completion:
    """The call, waited for on this thread."""
    return aio.submit(complete_async(request)).result()


async def complete_async(request: CompletionRequest) -> Completion:
    """The call, on the provider loop. Closing its `call` (from any thread) cancels it there, which
    closes its connection at once; the call then ends with ProviderError("canceled"), whatever it
    was awaiting, and never as a canceled future."""
    call = request.call or Call()
    try:
        return await _complete(request, call)
    except asyncio.CancelledError:
        if call.closed:
            raise ProviderError("canceled", "The call was closed.") from None
        raise


async def _complete(request: CompletionRequest, call: Call) -> Completion:
    if not settings.ANTHROPIC_API_KEY:
        raise ProviderError("provider_not_configured", "ANTHROPIC_API_KEY is not set.")
    try:
        raw = await _client().messages.with_raw_response.create(
            model=request.model,
            max_tokens=request.max_tokens,
            system=request.system,
            messages=[{"role": "user", "content": request.message}],
            timeout=request.timeout,
            stream=True,
        )
    except anthropic.APITimeoutError as exc:
        raise ProviderError("timeout", "The provider did not answer in time.") from exc
    except anthropic.APIConnectionError as exc:
        raise ProviderError("provider_unavailable", str(exc), retriable=True) from exc
    except anthropic.APIStatusError as exc:
        raise _classify(exc) from exc
    response = raw.http_response
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    assert task is not None  # a coroutine run by the loop runs in a task

    def close() -> None:
        loop.call_soon_threadsafe(_drop_connection, response, task)

    call.attach(close)
    try:
        return await _read(anthropic.AsyncStream.raw_events(response), call)
    except Exception as exc:
        if call.closed:  # closed by the waiting thread (a cancel, the deadline): whatever broke, that did
            raise ProviderError("canceled", "The call was closed.") from exc
        if isinstance(exc, ProviderError):
            raise
        if isinstance(exc, httpx2.TimeoutException):
            raise ProviderError("timeout", "The provider did not answer in time.") from exc
        if isinstance(exc, httpx2.HTTPError):
            raise ProviderError("provider_unavailable", f"The stream broke: {exc}", retriable=True) from exc
        raise
    finally:
        await response.aclose()


def _drop_connection(response: httpx2.Response, task: asyncio.Task) -> None:
    """On the loop: abort the response's connection, so the provider's next write fails and it
    stops, then cancel the call's task. Closing it instead would, over TLS, send close_notify and
    keep the connection open until the provider answers it (up to 30 s on the loop)."""
    transport = _transport_of(response)
    if transport is not None:
        transport.abort()
    task.cancel()


def _transport_of(response: httpx2.Response) -> asyncio.Transport | None:
    """The connection of a response read through the SDK's aiohttp transport: httpx wraps the
    transport's stream (`_stream`), which holds aiohttp's response (`_aiohttp_response`). Neither is
    public; tests/test_execution.py's TLS cancel test fails if this stops finding it."""
    stream: object = response.stream
    while stream is not None and not hasattr(stream, "_aiohttp_response"):
        stream = getattr(stream, "_stream", None)
    connection = getattr(getattr(stream, "_aiohttp_response", None), "connection", None)
    return getattr(connection, "transport", None)


async def _read(events, call: Call) -> Completion:
    """Read the stream's events to its end, reporting fragments and usage to `call` as they come.
    The events' JSON is read as it is (not into the SDK's typed models), so a count of the wrong
    type is refused rather than coerced, and no per-event objects cost the worker CPU."""
    parts: list[str] = []
    stopped = False
    try:
        async for sse in events:
            kind = sse.event
            if kind == "content_block_delta":
                delta = sse.json()["delta"]
                if delta["type"] == "text_delta":
                    text = delta["text"]
                    if not isinstance(text, str):
                        raise TypeError("a text delta that is not a string")
                    parts.append(text)
                    call.delta(text)
            elif kind == "message_start":
                usage = sse.json()["message"]["usage"]
                cache_write, cache_read = (
                    usage.get("cache_creation_input_tokens"),
                    usage.get("cache_read_input_tokens"),
                )
                raw_input, cache_write, cache_read, output = checked_tokens(
                    usage["input_tokens"],
                    0 if cache_write is None else cache_write,  # absent or null: none
                    0 if cache_read is None else cache_read,
                    usage.get("output_tokens", 0),
                )
                call.input_tokens, call.output_tokens = raw_input + cache_write + cache_read, output
            elif kind == "message_delta":
                (call.output_tokens,) = checked_tokens(sse.json()["usage"]["output_tokens"])
            elif kind == "message_stop":
                stopped = True
            elif kind == "error":
                raise _stream_error(sse.json())
            if call.closed:
                break
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ProviderError("invalid_provider_usage", "The provider's answer could not be read.") from exc
    if call.closed:
        raise ProviderError("canceled", "The call was closed.")
    if not stopped:
        raise ProviderError("provider_unavailable", "The stream ended before message_stop.", retriable=True)
    reported = call.reported()
    if reported is None:
        raise ProviderError("invalid_provider_usage", "The provider's answer had no usage.")
    return Completion(text="".join(parts), input_tokens=reported[0], output_tokens=reported[1])
