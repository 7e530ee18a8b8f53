"""What every runner takes and returns, and the one error type it raises."""

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
