"""Reserve -> settle, all in the database (CONTRACT section 6).

An admission reserves in the statement that inserts its run (quota_reserve_inserting) or inside its
transaction (quota_reserve); a settlement (settlement_write) is atomic with the UPDATE that ends the run. Both change counters only by statements that add in the
database (conditional UPDATEs, an upsert), never by writing back a value read before: PostgreSQL
re-checks the WHERE clause of an UPDATE that waited for a row lock, so two concurrent admissions
cannot both take the last tokens."""

import datetime as dt
import functools
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from agents.models import TERMINAL_STATUSES, Run
from maschina.rows import column, rows_of, table
from routing.models import Tier

from .alerts import THRESHOLDS, alerts_record
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
        self.quota, self.used, self.limit, self.reserved, self.requested = (
            quota,
            used,
            limit,
            reserved,
            requested,
        )
        self.resets_at = period_end(period)


def limits_for(plan: Plan, tier) -> Limits:
    """The monthly limits of a plan: the user's overrides, else the tier's. `tier` is a TierInfo."""
    if tier.quota_exempt:
        return Limits(None, None, True)
    tokens = plan.token_quota_override if plan.token_quota_override is not None else tier.monthly_token_quota
    runs = plan.run_quota_override if plan.run_quota_override is not None else tier.monthly_run_quota
    return Limits(tokens, runs, False)


def _counters_sql(assignments: str, where: str, returning: str) -> str:
    """An UPDATE of the user's counter row for a period (parameters: the assignments', then user
    and period, then the `where` conditions'), returning the `returning` columns of the updated row.
    RETURNING saves the read that would follow, and with it the time the row stays locked
    (PostgreSQL, and SQLite from 3.35)."""
    return f"UPDATE {UsagePeriod._meta.db_table} SET {assignments} WHERE user_id = %s AND period = %s{where} RETURNING {returning}"


def _counters_update(
    assignments: str,
    params: list,
    *,
    user_id: int,
    period: dt.date,
    where: str = "",
    where_params=(),
    returning: str,
):
    """Run that UPDATE; the updated row's `returning` columns, or None when no row matched."""
    with connection.cursor() as cursor:
        cursor.execute(
            _counters_sql(assignments, where, returning),
            [*params, user_id, connection.ops.adapt_datefield_value(period), *where_params],
        )
        return cursor.fetchone()


_RESERVE = "tokens_reserved = tokens_reserved + %s, runs_used = runs_used + 1"


def _reserve_conditions(tokens: int, limits: Limits) -> tuple[str, list, bool]:
    """The conditions under which the counter row takes one more run reserving `tokens`, and
    whether they check the token limit."""
    where, where_params = "", []
    # A 0-token reservation (a 0x model) is admitted even at a token limit of 0 (CONTRACT section 6).
    checks_tokens = limits.tokens is not None and tokens > 0
    if checks_tokens:
        where += " AND tokens_used <= %s - tokens_reserved"
        where_params.append(limits.tokens - tokens)
    if limits.runs is not None:
        where += " AND runs_used <= %s"
        where_params.append(limits.runs - 1)
    return where, where_params, checks_tokens


def quota_reserve_inserting(
    insert: tuple[str, list], *, user_id: int, period: dt.date, tokens: int, limits: Limits
) -> bool:
    """On PostgreSQL, count one run, reserve `tokens` and INSERT the run in one statement: a
    data-modifying WITH whose INSERT selects from the reservation, so it writes the run only if the
    reservation was taken. One round trip, where a transaction takes four (BEGIN, INSERT, UPDATE,
    COMMIT; issue 6). `insert` is the run's INSERT ... SELECT ... FROM reserved (rows.insert_sql).

    False, having written nothing, elsewhere than on PostgreSQL, when the counter row refused or is
    missing (a limit, or the period's first run), or when the run would reach the first runs alert:
    the caller then goes quota_reserve's way, which tells which limit refused, and records the alert
    in the run's transaction. Part of the caller's transaction if there is one."""
    if connection.vendor != "postgresql":
        return False
    where, where_params, _ = _reserve_conditions(tokens, limits)
    if limits.runs:  # only below the first runs alert: the general way records alerts with the run
        where += " AND (runs_used + 1) * 100 < %s"
        where_params = [*where_params, THRESHOLDS[0] * limits.runs]
    insert_sql, insert_params = insert
    with connection.cursor() as cursor:
        cursor.execute(
            _reserve_inserting_sql(insert_sql, where),
            [tokens, user_id, connection.ops.adapt_datefield_value(period), *where_params, *insert_params],
        )
        return cursor.fetchone() is not None


@functools.cache
def _reserve_inserting_sql(insert_sql: str, where: str) -> str:
    return f"WITH reserved AS ({_counters_sql(_RESERVE, where, 'runs_used')}), inserted AS ({insert_sql}) SELECT runs_used FROM reserved"


def quota_reserve(*, user_id: int, period: dt.date, tokens: int, limits: Limits) -> None:
    """Count one run and reserve `tokens` against the period, or raise QuotaExceeded.

    Must run inside a transaction that also records the run, so a failure after it undoes it; the
    caller does this last before committing, so the counter row stays locked only for the commit."""
    where, where_params, checks_tokens = _reserve_conditions(tokens, limits)
    for _ in range(4):
        updated = _counters_update(
            _RESERVE,
            [tokens],
            user_id=user_id,
            period=period,
            where=where,
            where_params=where_params,
            returning="runs_used",
        )
        if updated is not None:
            if limits.runs:
                alerts_record(
                    user_id=user_id, period=period, quota="runs", used=updated[0], limit=limits.runs
                )
            return
        # No row yet (the period's first run), or a limit refused it: which one, read under the row
        # lock. A settlement can free room between the refused UPDATE and this read; then nothing is
        # over and the UPDATE is simply tried again.
        usage = UsagePeriod.objects.select_for_update().filter(user_id=user_id, period=period).first()
        if usage is None:
            UsagePeriod.objects.bulk_create(
                [UsagePeriod(user_id=user_id, period=period)], ignore_conflicts=True
            )
            continue
        if checks_tokens and usage.tokens_used + usage.tokens_reserved + tokens > limits.tokens:
            raise QuotaExceeded(
                "tokens", usage.tokens_used, limits.tokens, period, usage.tokens_reserved, tokens
            )
        if limits.runs is not None and usage.runs_used + 1 > limits.runs:
            raise QuotaExceeded("runs", usage.runs_used, limits.runs, period)
    raise AssertionError("the quota UPDATE refused a run that fits")


def usage_settle(run_id) -> bool:
    """Replace a terminal run's reservation by what it actually costs, exactly once.

    Bills the raw usage stored on the run (if the provider reported any) at the run's multiplier,
    writes its ledger row and per-model counters, and releases the reservation. Returns False when
    the run was already settled (a redelivery), having changed nothing. (A worker whose run completes
    settles it in the UPDATE that ends it, runtime.services.run_complete.)"""
    # Inside the caller's transaction when there is one (run_finish): no savepoint, whose two extra
    # round trips would buy nothing, as any failure here fails the caller's transaction anyway.
    with transaction.atomic(savepoint=False):
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.settled_at is not None or run.status not in TERMINAL_STATUSES:
            return False
        has_usage = run.input_tokens is not None and run.output_tokens is not None
        run.billed_tokens = (
            billed_tokens(run.input_tokens, run.output_tokens, run.multiplier) if has_usage else None
        )
        counters = settlement_write(
            run,
            {"id": run.pk, "settled_at": None},
            settled_at=timezone.now(),
            billed_tokens=run.billed_tokens,
        )
        token_alerts_record(run, counters)  # in the same transaction
    return True


def settlement_write(run: Run, where: dict, **values) -> tuple | None:
    """Settle a run: the UPDATE of its row that `where` and `values` describe (rows.update_sql;
    `values` set settled_at and billed_tokens, None when the provider reported no usage), then the
    ledger row and per-model counters of what it used and the user's counters, its reservation
    released. Each of these reads the run row as that UPDATE left it, so none can disagree with it.

    The user's counters as updated (tokens used, plan tier, token override; NULLs if the user has no
    counter row), for token_alerts_record; None, having changed nothing, when the UPDATE matches no
    row. Atomic on its own, and part of the caller's transaction if there is one: on PostgreSQL the
    four are one statement (a data-modifying WITH), one round trip and one statement for the server
    on every run (issue 6); elsewhere, four statements in a transaction."""
    update, params = rows_of(Run).update_sql(where, returning=_settled_columns(connection.vendor), **values)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_settlement_in_one(update), params)
            return cursor.fetchone()  # a row (of NULLs without a counter row) when the UPDATE matched
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(update, params)
        if cursor.fetchone() is None:
            return None
        run_id = Run._meta.pk.get_db_prep_value(run.pk, connection)
        for statement in _settlement_statements(connection.vendor, _run_by_id(connection.vendor)):
            cursor.execute(statement, [run_id])
        return cursor.fetchone() or (None, None, None)  # the last statement's RETURNING


def token_alerts_record(run: Run, counters: tuple) -> None:
    """The token alerts a settled run (its billed_tokens set) has reached, from the counters that
    settlement_write returned: the limit is the plan's as it is now (no query of its own)."""
    used, tier_id, token_quota_override = counters
    if run.billed_tokens and used is not None:
        limit = _token_limit(tier_id or DEFAULT_TIER, token_quota_override)
        alerts_record(user_id=run.user_id, period=run.period, quota="tokens", used=used, limit=limit)


def token_alerts_catch_up(run: Run) -> None:
    """Record the token alerts the user's counters have reached, for a completed run whose worker
    may have died between its settlement's commit and its alerts (runtime.execution records them
    in a step of their own; the redelivery of the run's message comes here)."""
    counters = (
        UsagePeriod.objects.filter(user_id=run.user_id, period=run.period)
        .values_list("tokens_used", "user__plan__tier", "user__plan__token_quota_override")
        .first()
    )
    if counters is not None:
        token_alerts_record(run, counters)


# What a settlement reads of the settled run, as `done`: the ledger copies it.
_SETTLED = (
    "id",
    "user",
    "period",
    "model",
    "input_tokens",
    "output_tokens",
    "multiplier",
    "billed_tokens",
    "reserved_tokens",
    "settled_at",
)


@functools.cache
def _settled_columns(vendor: str) -> str:
    return ", ".join(column(Run, name) for name in _SETTLED)


@functools.cache
def _run_by_id(vendor: str) -> str:
    """The settled run as `done`, read back by its id (the one parameter)."""
    return f"(SELECT {_settled_columns(vendor)} FROM {table(Run)} WHERE {column(Run, 'id')} = %s) AS done"


@functools.cache
def _settlement_in_one(update: str) -> str:
    """The settling UPDATE and the writes that read it, as one PostgreSQL statement. It yields the
    user's counters (tokens used, plan tier, token override) when the UPDATE matched, else no row."""
    ledger, model_usage, user_counters = _settlement_statements(connection.vendor, "done")
    return (
        f"WITH done AS ({update}), ledger AS ({ledger}), model_usage AS ({model_usage}), counters AS ({user_counters}) "
        "SELECT counters.* FROM done LEFT JOIN counters ON true"
    )


@functools.cache
def _settlement_statements(vendor: str, source: str) -> tuple[str, str, str]:
    """The ledger INSERT, the per-model upsert (on the unique user, period, model: the model's first
    run creates its row) and the user's counters UPDATE, each reading the settled run as `done` from
    `source`. A run without usage (billed_tokens NULL) writes no ledger row and no model counters, and
    only releases its reservation. The counters' UPDATE returns the tokens used and, riding along,
    the user's plan tier and token override, for the token limit as it is now (no query of its own)."""
    done = {name: f"done.{column(Run, name)}" for name in _SETTLED}
    billed = f"WHERE {done['billed_tokens']} IS NOT NULL"
    ledger_columns = [
        column(LedgerEntry, name)
        for name in (
            "run",
            "user",
            "period",
            "model",
            "input_tokens",
            "output_tokens",
            "multiplier",
            "billed_tokens",
            "created_at",
        )
    ]
    ledger_values = [
        done[name]
        for name in (
            "id",
            "user",
            "period",
            "model",
            "input_tokens",
            "output_tokens",
            "multiplier",
            "billed_tokens",
            "settled_at",
        )
    ]
    ledger = f"INSERT INTO {table(LedgerEntry)} ({', '.join(ledger_columns)}) SELECT {', '.join(ledger_values)} FROM {source} {billed}"

    usage_table = table(ModelUsage)
    key = [column(ModelUsage, name) for name in ("user", "period", "model")]
    counts = [column(ModelUsage, name) for name in ("runs", "input_tokens", "output_tokens", "billed_tokens")]
    add = ", ".join(f"{count} = {usage_table}.{count} + excluded.{count}" for count in counts)
    usage_values = [
        done["user"],
        done["period"],
        done["model"],
        "1",
        done["input_tokens"],
        done["output_tokens"],
        done["billed_tokens"],
    ]
    model_usage = (
        f"INSERT INTO {usage_table} ({', '.join(key + counts)}) SELECT {', '.join(usage_values)} FROM {source} {billed} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {add}"
    )

    period_table = table(UsagePeriod)
    used, reserved = column(UsagePeriod, "tokens_used"), column(UsagePeriod, "tokens_reserved")
    plan = f"(SELECT {{}} FROM {table(Plan)} WHERE {column(Plan, 'user')} = {period_table}.{column(UsagePeriod, 'user')})"
    user_counters = (
        f"UPDATE {period_table} SET {used} = {used} + COALESCE({done['billed_tokens']}, 0), {reserved} = {reserved} - {done['reserved_tokens']} "
        f"FROM {source} WHERE {period_table}.{column(UsagePeriod, 'user')} = {done['user']} AND {period_table}.{column(UsagePeriod, 'period')} = {done['period']} "
        f"RETURNING {period_table}.{used}, {plan.format(column(Plan, 'tier'))}, {plan.format(column(Plan, 'token_quota_override'))}"
    )
    return ledger, model_usage, user_counters


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
