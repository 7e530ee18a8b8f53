"""Admission's limits (CONTRACT sections 6, 10 and 11): a run is admitted only if
used + reserved + its reservation <= limit, for the user and for its key, and only within the user's
concurrency and minute limits; counted by statements that add in the database (or under row locks),
so concurrent admissions can never take the same tokens or the same slot."""

import contextlib
import datetime as dt
import uuid
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from maschina.db.rows import fetch_one

from . import statements
from .alerts import THRESHOLDS, alerts_record
from .history import UsageLine, usage_day_add
from .models import KeyUsage, Throttle, UsagePeriod
from .periods import period_end
from .plans import Limits
from .throttle import MinuteWindow, RateLimited, bucket_level, window_of


class QuotaExceeded(Exception):
    def __init__(self, quota, used, limit, period, reserved=None, requested=None):
        super().__init__(f"{quota} quota exceeded")
        self.quota, self.used, self.limit, self.reserved, self.requested = (
            quota,
            used,
            limit,
            reserved,
            requested,
        )
        self.resets_at = period_end(period)
        self.window: MinuteWindow | None = None  # the minute limit's figures, for the answer's headers
        self.max_tokens_fit: int | None = None  # the largest max_tokens that would fit, when known


@dataclass(frozen=True)
class Admitted:
    """What an admission took: the user's minute window after it (None without a minute limit),
    and the user's runs in flight counting this one (queued or executing), which the run's
    dispatch reads to keep one user's burst from holding up the others (runs.dispatch)."""

    window: MinuteWindow | None
    in_flight: int


def _checked_token_limit(tokens: int, limit: int | None) -> int | None:
    """The token limit a reservation of `tokens` is checked against, or None: no limit, or a
    0-token reservation (a 0x model), admitted even at a token limit of 0 (CONTRACT section 6)."""
    return limit if tokens > 0 else None


def quota_reserve_inserting(
    insert_run: tuple[str, dict],
    *,
    user_id: int,
    period: dt.date,
    tokens: int,
    limits: Limits,
    now: dt.datetime,
    line: UsageLine,
    key_id: uuid.UUID | None = None,
    key_limit: int | None = None,
) -> Admitted | None:
    """PostgreSQL only: the whole admission in one statement (billing.statements), one round trip
    where a transaction takes several: count one run and reserve `tokens` for the user, take a
    concurrency slot and a run of the minute bucket, count and reserve on the key, and INSERT the
    run. `insert_run` is the run's INSERT ... SELECT ... FROM reserved and its parameters.

    Admitted when the run was admitted; None, having written nothing, when
    any limit refused, a counter row is missing (the period's first run) or the run would reach the
    first runs alert: the caller then goes quota_reserve's way, which tells which limit refused, and
    records the alert in the run's transaction."""
    insert_sql, insert_params = insert_run
    token_limit = _checked_token_limit(tokens, limits.tokens)
    key_token_limit = _checked_token_limit(tokens, key_limit)
    params = {
        "tokens": tokens,
        "user_id": user_id,
        "period": period,
        "token_room": token_limit - tokens if token_limit is not None else None,
        "runs_before": limits.runs - 1 if limits.runs is not None else None,
        # Only below the first runs alert: the general way records alerts with the run.
        "runs_alert": THRESHOLDS[0] * limits.runs if limits.runs else None,
        "concurrent": limits.concurrent,
        "per_minute": limits.per_minute,
        "now": now,
        "key_id": key_id,
        "key_room": key_token_limit - tokens if key_token_limit is not None else None,
        **line.statement_params(),
        **insert_params,
    }
    try:
        # A refusal by the throttle or the key fails the statement; inside a transaction (tests,
        # or a caller's) a savepoint keeps that failure from ending it.
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            row = fetch_one(statements.quota_reserve_inserting(insert_sql), params)
    except IntegrityError:
        return None
    if row is None:
        return None
    _runs_used, used, in_flight = row
    window = window_of(limits.per_minute, limits.per_minute - used) if limits.per_minute is not None else None
    return Admitted(window, in_flight)


def _over(counter, tokens: int, limit: int | None) -> bool:
    return limit is not None and counter.tokens_used + counter.tokens_reserved + tokens > limit


def _locked(rows, new):
    """The one row of `rows`, locked until the commit; `new` is inserted first when there is none."""
    row = rows.select_for_update().first()
    if row is None:
        type(new).objects.bulk_create([new], ignore_conflicts=True)
        row = rows.select_for_update().get()
    return row


def quota_reserve(
    *,
    user_id: int,
    period: dt.date,
    tokens: int,
    limits: Limits,
    line: UsageLine,
    now: dt.datetime | None = None,
    key_id: uuid.UUID | None = None,
    key_limit: int | None = None,
) -> Admitted:
    """Admit one run against every limit, in CONTRACT section 11's order (concurrency, the minute,
    the user's quota, the key's), or raise RateLimited or QuotaExceeded having changed nothing:
    count it and reserve `tokens` for the user and the key, take a concurrency slot and a run of
    the minute bucket. What it took: the minute window after it, and the runs in flight.

    Must run inside a transaction that also records the run, so a failure after it undoes it; the
    caller does this last before committing, so the rows stay locked only for the commit. They are
    locked in the order of every settlement (the user's counters, the throttle, the key's), and
    read under those locks, so what is checked is what is written."""
    now = now or timezone.now()
    counter = UsagePeriod.objects.filter(user_id=user_id, period=period)
    usage = _locked(counter, UsagePeriod(user_id=user_id, period=period))
    throttles = Throttle.objects.filter(user_id=user_id)
    throttle = _locked(throttles, Throttle(user_id=user_id))
    key_rows = KeyUsage.objects.filter(key_id=key_id, period=period)
    key_usage = _locked(key_rows, KeyUsage(key_id=key_id, period=period, user_id=user_id)) if key_id else None

    level = window = None
    if limits.per_minute is not None:
        level = bucket_level(limits.per_minute, throttle.bucket_used, throttle.bucket_at, now)
        window = window_of(limits.per_minute, level)
    if limits.concurrent is not None and throttle.active_runs + 1 > limits.concurrent:
        # No one can say when a run will end: try again in a second.
        raise RateLimited("concurrency", limits.concurrent, 1, window)
    if limits.per_minute is not None and window is not None and window.reset > 0:
        raise RateLimited("minute", limits.per_minute, window.reset, window)
    token_limit = _checked_token_limit(tokens, limits.tokens)
    refusal = None
    if _over(usage, tokens, token_limit):
        refusal = QuotaExceeded(
            "tokens", usage.tokens_used, limits.tokens, period, usage.tokens_reserved, tokens
        )
    elif limits.runs is not None and usage.runs_used + 1 > limits.runs:
        refusal = QuotaExceeded("runs", usage.runs_used, limits.runs, period)
    elif key_usage is not None and _over(key_usage, tokens, _checked_token_limit(tokens, key_limit)):
        refusal = QuotaExceeded(
            "key_tokens", key_usage.tokens_used, key_limit, period, key_usage.tokens_reserved, tokens
        )
    if refusal is not None:
        refusal.window = window
        raise refusal

    counter.update(tokens_reserved=F("tokens_reserved") + tokens, runs_used=F("runs_used") + 1)
    usage_day_add(user_id, line, runs=1)
    taken: dict = {"active_runs": F("active_runs") + 1}
    if limits.per_minute is not None and level is not None:
        taken.update(bucket_used=limits.per_minute - level + 1, bucket_at=max(now, throttle.bucket_at or now))
        window = window_of(limits.per_minute, level - 1)
    throttles.update(**taken)
    if key_usage is not None:
        key_rows.update(tokens_reserved=F("tokens_reserved") + tokens, runs=F("runs") + 1)
    if limits.runs:  # the row is ours until the commit: this figure is exact
        alerts_record(
            user_id=user_id, period=period, quota="runs", used=usage.runs_used + 1, limit=limits.runs
        )
    return Admitted(window, throttle.active_runs + 1)  # read under the row's lock: exact
