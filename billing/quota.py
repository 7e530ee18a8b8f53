"""Reserving quota at admission (CONTRACT section 6): a run is admitted only if
used + reserved + its reservation <= limit, counted by conditional UPDATEs that add in the database,
so concurrent admissions can never take the same tokens."""

import datetime as dt

from django.db.models import BigIntegerField, F, Value

from maschina.db.rows import fetch_one

from . import statements
from .alerts import THRESHOLDS, alerts_record
from .history import UsageLine, usage_day_add
from .models import UsagePeriod
from .periods import period_end
from .plans import Limits


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


def _checked_token_limit(tokens: int, limits: Limits) -> int | None:
    """The token limit a reservation of `tokens` is checked against, or None: no limit, or a
    0-token reservation (a 0x model), admitted even at a token limit of 0 (CONTRACT section 6)."""
    return limits.tokens if tokens > 0 else None


def quota_reserve_inserting(
    insert_run: tuple[str, dict],
    *,
    user_id: int,
    period: dt.date,
    tokens: int,
    limits: Limits,
    line: UsageLine,
) -> bool:
    """PostgreSQL only: count one run, reserve `tokens` and INSERT the run in one statement, one
    round trip where a transaction takes four. `insert_run` is the run's INSERT ... SELECT ...
    FROM reserved and its parameters.

    False, having written nothing, when the counter row refused or is missing (a limit, or the
    period's first run), or when the run would reach the first runs alert: the caller then goes
    quota_reserve's way, which tells which limit refused, and records the alert in the run's
    transaction."""
    insert_sql, insert_params = insert_run
    token_limit = _checked_token_limit(tokens, limits)
    params = {
        "tokens": tokens,
        "user_id": user_id,
        "period": period,
        "token_room": token_limit - tokens if token_limit is not None else None,
        "runs_before": limits.runs - 1 if limits.runs is not None else None,
        # Only below the first runs alert: the general way records alerts with the run.
        "runs_alert": THRESHOLDS[0] * limits.runs if limits.runs else None,
        **line.statement_params(),
        **insert_params,
    }
    return fetch_one(statements.quota_reserve_inserting(insert_sql), params) is not None


def quota_reserve(*, user_id: int, period: dt.date, tokens: int, limits: Limits, line: UsageLine) -> None:
    """Count one run and reserve `tokens` against the period, or raise QuotaExceeded; count the
    run on its usage `line` too.

    Must run inside a transaction that also records the run, so a failure after it undoes it; the
    caller does this last before committing, so the counter row stays locked only for the commit."""
    counter = UsagePeriod.objects.filter(user_id=user_id, period=period)
    fits = counter
    token_limit = _checked_token_limit(tokens, limits)
    if token_limit is not None:
        fits = fits.filter(
            tokens_used__lte=Value(token_limit - tokens, BigIntegerField()) - F("tokens_reserved")
        )
    if limits.runs is not None:
        fits = fits.filter(runs_used__lte=limits.runs - 1)
    for _ in range(4):
        if fits.update(tokens_reserved=F("tokens_reserved") + tokens, runs_used=F("runs_used") + 1):
            usage_day_add(user_id, line, runs=1)
            if limits.runs:  # the row is ours until the commit: this read is exact
                used = counter.values_list("runs_used", flat=True).get()
                alerts_record(user_id=user_id, period=period, quota="runs", used=used, limit=limits.runs)
            return
        # No row yet (the period's first run), or a limit refused it: which one, read under the row
        # lock. A settlement can free room between the refused UPDATE and this read; then nothing is
        # over and the UPDATE is simply tried again.
        usage = counter.select_for_update().first()
        if usage is None:
            UsagePeriod.objects.bulk_create(
                [UsagePeriod(user_id=user_id, period=period)], ignore_conflicts=True
            )
            continue
        if token_limit is not None and usage.tokens_used + usage.tokens_reserved + tokens > token_limit:
            raise QuotaExceeded(
                "tokens", usage.tokens_used, limits.tokens, period, usage.tokens_reserved, tokens
            )
        if limits.runs is not None and usage.runs_used + 1 > limits.runs:
            raise QuotaExceeded("runs", usage.runs_used, limits.runs, period)
    raise AssertionError("the quota UPDATE refused a run that fits")
