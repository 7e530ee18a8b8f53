"""What every runner takes and returns, and the one error type it raises."""

import threading
from collections.abc import Callable
from dataclasses import dataclass

# No single call reports more tokens than this; a larger or negative count is a provider fault,
# and billing it would be wrong either way.
MAX_SANE_TOKENS = 10_000_000


@dataclass(frozen=True)
class CompletionRequest:
    model: str  # the id the provider knows (without our "ollama/" prefix)
    system: str
    message: str
    max_tokens: int
    timeout: float  # seconds left for the whole call
    call: "Call | None" = None  # where a streaming runner reports its progress, and can be closed


@dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int  # raw: input + cache writes + cache reads
    output_tokens: int


class ProviderError(Exception):
    """A provider call that did not produce a completion. `code` is a CONTRACT section 7 error code."""

    def __init__(self, code: str, message: str, *, retriable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.message, self.retriable, self.retry_after = code, message, retriable, retry_after


class Call:
    """One provider call in flight, shared by the thread or loop that makes it and the thread that
    waits on it.

    A streaming runner hands each text fragment to `on_delta` as it arrives and records the usage the
    stream has reported so far; `close()` (a cancel, the deadline), from any thread, closes the call's
    connection, which ends the runner's read at once. A runner that cannot be closed attaches nothing,
    and the waiting thread then waits for its answer instead."""

    def __init__(self, on_delta: Callable[[str], None] | None = None):
        self.on_delta = on_delta
        self.streamed = False  # a fragment went out: a failure now cannot be retried or fall back
        self.input_tokens: int | None = None  # raw input + cache writes + cache reads, once reported
        self.output_tokens: int | None = None
        self.closed = False
        self._closer: Callable[[], None] | None = None
        self._lock = threading.Lock()

    @property
    def closable(self) -> bool:
        return self._closer is not None

    def attach(self, closer: Callable[[], None]) -> None:
        """Say how to close the call's connection. If close() came first, the runner reads what the
        provider reports first (its usage so far) and stops there, rather than dropping it unread."""
        with self._lock:
            self._closer = closer

    def close(self) -> None:
        with self._lock:
            self.closed = True
            closer = self._closer
        if closer is not None:
            try:
                closer()
            except Exception:  # closing a connection that is already failing: nothing more to do
                pass

    def delta(self, text: str) -> None:
        if not text or self.closed:
            return
        self.streamed = True
        if self.on_delta is not None:
            self.on_delta(text)

    def reported(self) -> tuple[int, int] | None:
        """The usage reported so far as (input, output) tokens, or None if the call reported none."""
        if self.input_tokens is None:
            return None
        return self.input_tokens, self.output_tokens or 0


def checked_tokens(*counts) -> list[int]:
    """The counts as ints, or ProviderError(invalid_provider_usage) when one is missing, not an
    integer, negative or absurd."""
    result = []
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_SANE_TOKENS:
            raise ProviderError(
                "invalid_provider_usage", f"The provider reported an invalid token count: {count!r}."
            )
        result.append(count)
    return result


def retry_after_secs(headers) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None
