"""Reserve -> settle, all in the database (CONTRACT section 6).

quota_reserve runs inside the caller's admission transaction; usage_settle (or usage_bill) inside
the worker's finishing transaction. Both change counters only by statements that add in the
database (conditional UPDATEs, an upsert), never by writing back a value read before: PostgreSQL
re-checks the WHERE clause of an UPDATE that waited for a row lock, so two concurrent admissions
cannot both take the last tokens."""
import datetime as dt
import functools
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from maschina.rows import column, rows_of
from routing.models import Tier

from .alerts import alerts_record
from .models import LedgerEntry, ModelUsage, Plan, UsagePeriod
from .periods import period_end
from .pricing import billed_tokens


DEFAULT_TIER = "access"  # of a user no one put on a tier


@dataclass(frozen=True)
class Limits:
    tokens: int | None  # None = unlimited
    runs: int | None
    exempt: bool  # skips both checks (internal)


class QuotaExceeded(Exception):
    def __init__(self, quota, used, limit, period, reserved=None, requested=None):
        super().__init__(f"{quota} quota exceeded")
        self.quota, self.used, self.limit, self.reserved, self.requested = quota, used, limit, reserved, requested
        self.resets_at = period_end(period)


def limits_for(plan: Plan, tier) -> Limits:
    """The monthly limits of a plan: the user's overrides, else the tier's. `tier` is a TierInfo."""
    if tier.quota_exempt:
        return Limits(None, None, True)
    tokens = plan.token_quota_override if plan.token_quota_override is not None else tier.monthly_token_quota
    runs = plan.run_quota_override if plan.run_quota_override is not None else tier.monthly_run_quota
    return Limits(tokens, runs, False)


def _counters_update(assignments: str, params: list, *, user_id: int, period: dt.date, where: str = "", where_params=(), returning: str):
    """One UPDATE of the user's counter row for `period`, returning the `returning` columns of the
    updated row (None when no row matched). RETURNING saves the read that would follow, and with it
    the time the row stays locked (PostgreSQL, and SQLite from 3.35)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {UsagePeriod._meta.db_table} SET {assignments} WHERE user_id = %s AND period = %s{where} RETURNING {returning}",
            [*params, user_id, connection.ops.adapt_datefield_value(period), *where_params],
        )
        return cursor.fetchone()


def quota_reserve(*, user_id: int, period: dt.date, tokens: int, limits: Limits) -> None:
    """Count one run and reserve `tokens` against the period, or raise QuotaExceeded.

    Must run inside a transaction that also records the run, so a failure after it undoes it; the
    caller does this last before committing, so the counter row stays locked only for the commit."""
    where, where_params = "", []
    # A 0-token reservation (a 0x model) is admitted even at a token limit of 0 (CONTRACT section 6).
    checks_tokens = limits.tokens is not None and tokens > 0
    if checks_tokens:
        where += " AND tokens_used <= %s - tokens_reserved"
        where_params.append(limits.tokens - tokens)
    if limits.runs is not None:
        where += " AND runs_used <= %s"
        where_params.append(limits.runs - 1)
    for _ in range(4):
        updated = _counters_update(
            "tokens_reserved = tokens_reserved + %s, runs_used = runs_used + 1",
            [tokens],
            user_id=user_id,
            period=period,
            where=where,
            where_params=where_params,
            returning="runs_used",
        )
        if updated is not None:
            if limits.runs:
                alerts_record(user_id=user_id, period=period, quota="runs", used=updated[0], limit=limits.runs)
            return
        # No row yet (the period's first run), or a limit refused it: which one, read under the row
        # lock. A settlement can free room between the refused UPDATE and this read; then nothing is
        # over and the UPDATE is simply tried again.
        usage = UsagePeriod.objects.select_for_update().filter(user_id=user_id, period=period).first()
        if usage is None:
            UsagePeriod.objects.bulk_create([UsagePeriod(user_id=user_id, period=period)], ignore_conflicts=True)
            continue
        if checks_tokens and usage.tokens_used + usage.tokens_reserved + tokens > limits.tokens:
            raise QuotaExceeded("tokens", usage.tokens_used, limits.tokens, period, usage.tokens_reserved, tokens)
        if limits.runs is not None and usage.runs_used + 1 > limits.runs:
            raise QuotaExceeded("runs", usage.runs_used, limits.runs, period)
    raise AssertionError("the quota UPDATE refused a run that fits")


def usage_settle(run_id) -> bool:
    """Replace a terminal run's reservation by what it actually costs, exactly once.

    Bills the raw usage stored on the run (if the provider reported any) at the run's multiplier,
    writes its ledger row and per-model counters, and releases the reservation. Returns False when
    the run was already settled (a redelivery), having changed nothing. (A worker whose run completes
    settles it in the same UPDATE that ends it, runtime.services.run_complete.)"""
    from agents.models import TERMINAL_STATUSES, Run

    # Inside the caller's transaction when there is one (run_finish): no savepoint, whose two extra
    # round trips would buy nothing, as any failure here fails the caller's transaction anyway.
    with transaction.atomic(savepoint=False):
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.settled_at is not None or run.status not in TERMINAL_STATUSES:
            return False
        has_usage = run.input_tokens is not None and run.output_tokens is not None
        run.billed_tokens = billed_tokens(run.input_tokens, run.output_tokens, run.multiplier) if has_usage else None
        Run.objects.filter(pk=run.pk).update(settled_at=timezone.now(), billed_tokens=run.billed_tokens)
        usage_bill(run)
    return True


def usage_bill(run) -> None:
    """The writes of a settlement, for a run the caller has just marked settled (its billed_tokens
    set, None when the provider reported no usage), in the caller's transaction: the ledger row and
    per-model counters of what it used, then the user's counters, with its reservation released."""
    billed = run.billed_tokens or 0
    if run.billed_tokens is not None:
        entry = LedgerEntry(
            run_id=run.pk,
            user_id=run.user_id,
            period=run.period,
            model=run.model,
            input_tokens=run.input_tokens,
            output_tokens=run.output_tokens,
            multiplier=run.multiplier,
            billed_tokens=billed,
        )
        rows_of(LedgerEntry).insert(entry)  # no save() of its own, no signals
        _model_usage_add(run, billed)
    # The user's counter row last: every admission of the user waits on its lock, held from here to
    # the commit. The user's plan rides along, for the token limit as it is now (no query of its own).
    updated = _counters_update(
        "tokens_used = tokens_used + %s, tokens_reserved = tokens_reserved - %s",
        [billed, run.reserved_tokens],
        user_id=run.user_id,
        period=run.period,
        returning=_used_and_plan(connection.vendor),
    )
    if billed and updated is not None:
        used, tier_id, token_quota_override = updated
        limit = _token_limit(tier_id or DEFAULT_TIER, token_quota_override)
        alerts_record(user_id=run.user_id, period=run.period, quota="tokens", used=used, limit=limit)


@functools.cache
def _used_and_plan(vendor: str) -> str:
    """RETURNING columns of the counter row: tokens used, and the user's plan tier and token override."""
    plan = f"(SELECT {{}} FROM {Plan._meta.db_table} WHERE user_id = {UsagePeriod._meta.db_table}.user_id)"
    return f"tokens_used, {plan.format(column(Plan, 'tier'))}, {plan.format(column(Plan, 'token_quota_override'))}"


def _model_usage_add(run, billed: int) -> None:
    """Add one run to its model's counters for the period: one upsert on the unique (user, period,
    model), which creates the model's row on its first run (PostgreSQL, and SQLite from 3.24)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _model_usage_upsert(connection.vendor),
            [run.user_id, connection.ops.adapt_datefield_value(run.period), run.model, run.input_tokens, run.output_tokens, billed],
        )


@functools.cache
def _model_usage_upsert(vendor: str) -> str:
    table = ModelUsage._meta.db_table
    key = [column(ModelUsage, name) for name in ("user", "period", "model")]
    counts = [column(ModelUsage, name) for name in ("runs", "input_tokens", "output_tokens", "billed_tokens")]
    add = ", ".join(f"{count} = {table}.{count} + excluded.{count}" for count in counts)
    return (
        f"INSERT INTO {table} ({', '.join(key + counts)}) VALUES (%s, %s, %s, 1, %s, %s, %s) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {add}"
    )


def _token_limit(tier_id: str, token_quota_override: int | None) -> int | None:
    """A monthly token limit (None: unlimited or exempt), from a plan's tier and override."""
    from routing.snapshot import get_rules

    plan = Plan(tier_id=tier_id, token_quota_override=token_quota_override)
    return limits_for(plan, get_rules().tiers[tier_id]).tokens


def plan_set(*, user, tier_slug: str, token_quota=..., run_quota=...) -> Plan:
    """Put a user on a tier; `...` leaves an override as it is, None removes it."""
    tier = Tier.objects.get(slug=tier_slug)
    plan, _ = Plan.objects.get_or_create(user=user, defaults={"tier": tier})
    plan.tier = tier
    if token_quota is not ...:
        plan.token_quota_override = token_quota
    if run_quota is not ...:
        plan.run_quota_override = run_quota
    plan.full_clean()
    plan.save()
    user.plan = plan  # the caller's user object must not keep a stale cached plan
    return plan
