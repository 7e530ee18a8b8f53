"""The rate limits of CONTRACT section 11: a user's runs in flight, and the minute limit as a token
bucket whose burst is the limit. Both live on the user's Throttle row and change only inside the
admission that takes the run (billing.quota), so a refused run moves neither.

The bucket holds up to `limit` runs and refills at limit/60 runs a second; a run takes one. It is
stored as what was drawn and not yet refilled (`used`, as of `at`) rather than as what is left, so
an operator who raises a limit gives the user the difference at once. The arithmetic is here once
for the ORM's way; billing.statements.ADMIT_THROTTLE spells the same in SQL."""

import datetime as dt
import math
from dataclasses import dataclass

# A level this close below a whole run counts as that run: the refill is a float.
EPSILON = 1e-9


class RateLimited(Exception):
    def __init__(self, scope: str, limit: int, retry_after: int, window: "MinuteWindow | None" = None):
        super().__init__(f"{scope} limit of {limit} reached")
        self.scope, self.limit, self.retry_after, self.window = scope, limit, retry_after, window


@dataclass(frozen=True)
class MinuteWindow:
    """The X-RateLimit-* figures of a minute limit: runs the bucket still admits (this one counted),
    and seconds until it admits one more (0 when it would now)."""

    limit: int
    remaining: int
    reset: int


def bucket_used(limit: int, used: float, at: dt.datetime | None, now: dt.datetime) -> float:
    """What is drawn from the bucket at `now`, from `used` at `at` (None: never drawn); at most the
    limit, so a lowered limit waits for one refill, not for what the old one allowed."""
    if at is None:
        return 0.0
    elapsed = max(0.0, (now - at).total_seconds())
    return min(float(limit), max(0.0, used - elapsed * limit / 60))


def bucket_level(limit: int, used: float, at: dt.datetime | None, now: dt.datetime) -> float:
    """The runs the bucket holds at `now`."""
    return limit - bucket_used(limit, used, at, now)


def seconds_to_next(limit: int, level: float) -> int:
    """Seconds until a bucket at `level` holds a whole run again (0 when it does)."""
    if level >= 1 - EPSILON:
        return 0
    if limit <= 0:
        return 60  # a limit of 0 never admits; say a minute rather than forever
    return max(1, math.ceil((1 - level) * 60 / limit))


def window_of(limit: int, level: float) -> MinuteWindow:
    return MinuteWindow(limit, max(0, math.floor(level + EPSILON)), seconds_to_next(limit, level))
