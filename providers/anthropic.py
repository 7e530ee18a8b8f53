"""Claude models through the official anthropic SDK.

The SDK's own retries are off (max_retries=0) and every call carries its timeout, so backoff is ours
(runs.execution) and no call outlives the run's deadline.

The SDK builds and sends the request and turns an error status into its exception, which we map to
a CONTRACT code. Calls stream (`create(stream=True)`): each text fragment goes to the call's
`on_delta` as it arrives, the input usage (with cache writes and reads) comes from message_start and
the output usage from the last message_delta, and closing the stream (a cancel) closes its
connection. OpenTelemetry spans are off unless ANTHROPIC_OPEN_TELEMETRY is set: without an exporter
configured they record nothing and still cost CPU."""

import itertools
import socket
import threading

import anthropic
import httpcore2
import httpx2
from django.conf import settings

from .base import Call, Completion, CompletionRequest, ProviderError, checked_tokens, retry_after_secs

# The SDK's clients, by (key, base URL, telemetry, shard). A worker holds hundreds of calls at once,
# and a client's connection pool looks over all of its connections whenever a request takes one or
# gives one back, under one lock: the threads are dealt out to SHARDS clients in turn, so each pool
# holds a share of the connections. The clients share one TLS context (its certificates loaded once).
SHARDS = 16
_clients: dict[tuple[str, str | None, bool, int], anthropic.Anthropic] = {}
_lock = threading.Lock()
_thread = threading.local()
_turns = itertools.count()
_tls: list = []


def _client() -> anthropic.Anthropic:
    shard = getattr(_thread, "shard", None)
    if shard is None:
        shard = _thread.shard = next(_turns) % SHARDS
    key = (settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL, settings.ANTHROPIC_OPEN_TELEMETRY, shard)
    with _lock:
        client = _clients.get(key)
        if client is None:
            if not _tls:
                _tls.append(httpx2.create_ssl_context())
            client = anthropic.Anthropic(
                api_key=settings.ANTHROPIC_API_KEY,
                base_url=settings.ANTHROPIC_BASE_URL,
                max_retries=0,
                timeout=settings.RUN_TIMEOUT_CAP_SECS,
                open_telemetry=None
                if settings.ANTHROPIC_OPEN_TELEMETRY
                else False,  # None: the SDK reads its env
                http_client=_small_reads(anthropic.DefaultHttpxClient(verify=_tls[0])),
            )
            _clients[key] = client
        return client


# A call waiting on its provider sits in a read, whose buffer is allocated before the read blocks:
# httpcore asks for 64 KiB, which a node holding a thousand calls keeps a thousand of. The events of
# a stream are small, so reads of READ_BYTES cost no more calls to read an answer.
READ_BYTES = 4096


class _SmallReadStream(httpcore2.NetworkStream):
    def __init__(self, stream: httpcore2.NetworkStream):
        self.stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(min(max_bytes, READ_BYTES), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, timeout)

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore2.NetworkStream:
        return _SmallReadStream(self.stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        return self.stream.get_extra_info(info)


class _SmallReads(httpcore2.NetworkBackend):
    def __init__(self, backend: httpcore2.NetworkBackend):
        self.backend = backend

    def connect_tcp(self, *args, **kwargs) -> httpcore2.NetworkStream:
        return _SmallReadStream(self.backend.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args, **kwargs) -> httpcore2.NetworkStream:
        return _SmallReadStream(self.backend.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


def _small_reads(client: httpx2.Client) -> httpx2.Client:
    """The SDK's client with reads of at most READ_BYTES on each of its connection pools (httpx
    takes no network backend, so it is set on the pools the SDK's transports made)."""
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if pool is not None:
            pool._network_backend = _SmallReads(pool._network_backend)
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
    if not settings.ANTHROPIC_API_KEY:
        raise ProviderError("provider_not_configured", "ANTHROPIC_API_KEY is not set.")
    call = request.call or Call()
    try:
        raw = _client().messages.with_raw_response.create(
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
    call.attach(_closer(response))
    try:
        return _read(anthropic.Stream.raw_events(response), call)
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
        response.close()


def _closer(response):
    """Close the call from another thread: shut its socket down first, which wakes a read blocked on
    a silent stream at once (closing the response alone leaves that read waiting for the next bytes),
    then close the response. The socket is shut down beneath TLS, as the reading thread owns that."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None

    def close():
        if isinstance(sock, socket.socket):
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:  # already closed by its reader
                pass
        response.close()

    return close


def _read(events, call: Call) -> Completion:
    """Read the stream's events to its end, reporting fragments and usage to `call` as they come.
    The events' JSON is read as it is (not into the SDK's typed models), so a count of the wrong
    type is refused rather than coerced, and no per-event objects cost the worker CPU."""
    parts: list[str] = []
    stopped = False
    try:
        for sse in events:
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
