"""The billing arithmetic (CONTRACT section 6). Integers for tokens, Decimal for multipliers,
rounding up, in this one place."""

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

# Framing the provider adds around the system prompt and the message (roles, separators).
PROMPT_OVERHEAD_TOKENS = 64


def billed_tokens(input_tokens: int, output_tokens: int, multiplier: Decimal) -> int:
    """ceil((input + output) x multiplier)."""
    return int((Decimal(input_tokens + output_tokens) * multiplier).to_integral_value(rounding=ROUND_CEILING))


def input_token_bound(system_prompt: str, message: str) -> int:
    """An upper bound on the input tokens of a run: every token of a byte-level tokenizer spans at
    least one byte, so the UTF-8 length of what we send, plus the framing, bounds the count."""
    return len(system_prompt.encode()) + len(message.encode()) + PROMPT_OVERHEAD_TOKENS


def reservation(input_bound: int, max_tokens: int, multiplier: Decimal) -> int:
    """The worst case a run can bill: all of its input bound and max_tokens of output."""
    return billed_tokens(input_bound, max_tokens, multiplier)


def max_tokens_within(room: int, input_bound: int, multiplier: Decimal) -> int:
    """The largest max_tokens whose reservation fits in `room` tokens (0 or less: none does), for
    the refusal that says a lower max_tokens would fit. `multiplier` > 0."""
    fit = int((Decimal(room) / multiplier).to_integral_value(rounding=ROUND_FLOOR)) - input_bound
    while fit > 0 and reservation(input_bound, fit, multiplier) > room:
        fit -= 1  # the division's rounding, never more than a step or two
    return fit
