"""Settling a run's bill (CONTRACT section 6): its ledger row, its per-model counters and the user's
counters, its reservation released, its concurrency slot freed and its key's month settled. The
runs app calls this with the figures of a run it has just marked settled, in the same transaction;
on PostgreSQL it writes all of it in the one statement of billing.statements.settlement instead.
Billing never writes the run table."""

import datetime as dt
import decimal
import logging
import uuid
from dataclasses import dataclass

from django.db.models import F
from django.db.models.functions import Greatest

from maschina import metrics

from .alerts import alerts_record
from .history import UsageLine, usage_day_add
from .models import KeyUsage, LedgerEntry, ModelUsage, Throttle, UsagePeriod
from .plans import token_limit

logger = logging.getLogger(__name__)

Counters = tuple  # (tokens used, plan tier id, plan token override) of the user's period, as settled


@dataclass(frozen=True)
class SettledRun:
    """What billing reads of a settled run: the columns billing.statements.SETTLEMENT_WRITES reads."""

    run_id: uuid.UUID
    user_id: int
    agent_id: uuid.UUID | None
    key_id: uuid.UUID | None
    created_at: dt.datetime
    period: dt.date
    model: str
    input_tokens: int | None
    output_tokens: int | None
    multiplier: decimal.Decimal
    billed_tokens: int | None  # None: the provider reported no usage
    reserved_tokens: int


def usage_record(run: SettledRun) -> Counters:
    """The ORM's way of SETTLEMENT_WRITES, inside the caller's transaction; the user's counters."""
    if run.billed_tokens is not None:
        # The bill is priced from the usage: a billed run has both token counts.
        assert run.input_tokens is not None and run.output_tokens is not None
        LedgerEntry.objects.create(
            run_id=run.run_id,
            user_id=run.user_id,
            period=run.period,
            model=run.model,
            input_tokens=run.input_tokens,
            output_tokens=run.output_tokens,
            multiplier=run.multiplier,
            billed_tokens=run.billed_tokens,
        )
        line = {"user_id": run.user_id, "period": run.period, "model": run.model}
        ModelUsage.objects.bulk_create([ModelUsage(**line)], ignore_conflicts=True)  # the model's first run
        ModelUsage.objects.filter(**line).update(
            runs=F("runs") + 1,
            input_tokens=F("input_tokens") + run.input_tokens,
            output_tokens=F("output_tokens") + run.output_tokens,
            billed_tokens=F("billed_tokens") + run.billed_tokens,
        )
        day = UsageLine.of(
            created_at=run.created_at, model=run.model, agent_id=run.agent_id, key_id=run.key_id
        )
        usage_day_add(
            run.user_id,
            day,
            input_tokens=run.input_tokens,
            output_tokens=run.output_tokens,
            billed_tokens=run.billed_tokens,
        )
    counter = UsagePeriod.objects.filter(user_id=run.user_id, period=run.period)
    counter.update(
        tokens_used=F("tokens_used") + (run.billed_tokens or 0),
        tokens_reserved=F("tokens_reserved") - run.reserved_tokens,
    )
    # Its concurrency slot back, then the key's month (the lock order of admission).
    Throttle.objects.filter(user_id=run.user_id).update(active_runs=Greatest(F("active_runs") - 1, 0))
    if run.key_id is not None:
        KeyUsage.objects.filter(key_id=run.key_id, period=run.period).update(
            tokens_used=F("tokens_used") + (run.billed_tokens or 0),
            tokens_reserved=F("tokens_reserved") - run.reserved_tokens,
        )
    return counters_of(run.user_id, run.period) or (None, None, None)


def counters_of(user_id: int, period: dt.date) -> Counters | None:
    return (
        UsagePeriod.objects.filter(user_id=user_id, period=period)
        .values_list("tokens_used", "user__plan__tier", "user__plan__token_quota_override")
        .first()
    )


def token_alerts_record(
    *, user_id: int, period: dt.date, billed_tokens: int | None, counters: Counters
) -> None:
    """The token alerts a settled run has reached, from the counters its settlement returned: the
    limit is the plan's as it is now (no query of its own)."""
    used, tier_id, token_quota_override = counters
    if billed_tokens and used is not None:
        limit = token_limit(tier_id, token_quota_override)
        alerts_record(user_id=user_id, period=period, quota="tokens", used=used, limit=limit)


def over_reservation_note(*, run_id, billed_tokens: int | None, reserved_tokens: int) -> bool:
    """Log a settled run billed above its reservation. The reservation is the bound that keeps a
    user under the limit (CONTRACT section 6), so a provider reporting more than it is a fault an
    operator must see; `manage.py billing_audit` lists such runs too. True when it was one."""
    if billed_tokens is None or billed_tokens <= reserved_tokens:
        return False
    logger.warning(
        "run %s billed %d tokens above its reservation of %d", run_id, billed_tokens, reserved_tokens
    )
    metrics.over_reservation()
    return True
