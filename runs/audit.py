"""Checks every billing invariant on a live database (`manage.py billing_audit`). Sums over the
ledger are fine here: this is an operator's tool, never on a request path. It lives with the runs,
which it reads beside billing's rows."""

import datetime as dt
from collections import defaultdict

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing.models import LedgerEntry, ModelUsage, UsageDay, UsagePeriod
from billing.periods import period_end
from billing.pricing import billed_tokens

from .models import TERMINAL_STATUSES, Run


def audit(period: dt.date | None = None) -> tuple[dict, list[str]]:
    """(summary figures, problems). No problems means the counters, the ledger and the runs agree.

    Every read sees one snapshot of the database (REPEATABLE READ on PostgreSQL), so settlements
    committing while the audit runs cannot show up half-seen as mismatches."""
    outermost = not connection.in_atomic_block  # the isolation level is the transaction's first statement
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _audit(period)


def _audit(period):
    problems = []
    runs = Run.objects.all()
    ledger = LedgerEntry.objects.all()
    usage_rows = UsagePeriod.objects.all()
    model_rows = ModelUsage.objects.all()
    day_lines = UsageDay.objects.all()
    if period is not None:
        runs, ledger = runs.filter(period=period), ledger.filter(period=period)
        usage_rows, model_rows = usage_rows.filter(period=period), model_rows.filter(period=period)
        day_lines = day_lines.filter(day__gte=period, day__lt=period_end(period).date())

    # 1. One ledger row per billed run, only for settled terminal runs, with the run's own figures.
    entries = {e.run_id: e for e in ledger}
    for run in runs.filter(pk__in=entries.keys()):
        entry = entries[run.pk]
        if run.status not in TERMINAL_STATUSES or run.settled_at is None:
            problems.append(
                f"run {run.pk} has a ledger row but is {run.status}, settled={run.settled_at is not None}"
            )
        expected = billed_tokens(entry.input_tokens, entry.output_tokens, entry.multiplier)
        if entry.billed_tokens != expected or run.billed_tokens != entry.billed_tokens:
            problems.append(
                f"run {run.pk} billed {run.billed_tokens}, ledger {entry.billed_tokens}, "
                f"arithmetic {expected}"
            )
        if (run.input_tokens, run.output_tokens, run.model) != (
            entry.input_tokens,
            entry.output_tokens,
            entry.model,
        ):
            problems.append(f"run {run.pk} usage differs from its ledger row")
    billed_without_entry = runs.filter(billed_tokens__isnull=False).exclude(pk__in=entries.keys()).count()
    if billed_without_entry:
        problems.append(f"{billed_without_entry} run(s) have billed_tokens but no ledger row")

    # 2. No run is billed above its reservation: that bound is what keeps concurrent runs under
    # the limit (CONTRACT sections 6 and 14), so a provider that reported more breaks the promise.
    for run_id, billed, reservation in (
        runs.filter(billed_tokens__gt=F("reserved_tokens"))
        .order_by("created_at")
        .values_list("id", "billed_tokens", "reserved_tokens")
    ):
        problems.append(f"run {run_id} billed {billed} tokens above its reservation of {reservation}")

    # 3. Nothing stays reserved by a terminal run (beyond the moment between finishing and settling).
    grace = timezone.now() - dt.timedelta(seconds=settings.SWEEP_REAP_GRACE_SECS)
    unsettled = runs.filter(
        status__in=TERMINAL_STATUSES, settled_at__isnull=True, finished_at__lt=grace
    ).count()
    if unsettled:
        problems.append(f"{unsettled} terminal run(s) still hold a reservation")

    # 4. Per user and period, the counters equal the sums of the ledger and of the runs.
    ledger_sums = {
        (r["user_id"], r["period"]): r["billed"]
        for r in ledger.values("user_id", "period").annotate(billed=Sum("billed_tokens"))
    }
    run_counts = {
        (r["user_id"], r["period"]): r["n"] for r in runs.values("user_id", "period").annotate(n=Count("id"))
    }
    reserved = {
        (r["user_id"], r["period"]): r["r"]
        for r in runs.filter(settled_at__isnull=True)
        .values("user_id", "period")
        .annotate(r=Sum("reserved_tokens"))
    }
    seen = set()
    for row in usage_rows:
        key = (row.user_id, row.period)
        seen.add(key)
        counted = (ledger_sums.get(key, 0), run_counts.get(key, 0), reserved.get(key, 0))
        if (row.tokens_used, row.runs_used, row.tokens_reserved) != counted:
            problems.append(
                f"user {row.user_id} {row.period:%Y-%m}: counters used/runs/reserved "
                f"{row.tokens_used}/{row.runs_used}/{row.tokens_reserved}, "
                f"runs and ledger say {counted[0]}/{counted[1]}/{counted[2]}"
            )
    for key in (set(ledger_sums) | set(run_counts)) - seen:
        problems.append(f"user {key[0]} {key[1]:%Y-%m}: runs or ledger rows without a counter row")

    # 5. The by_model counters equal the ledger grouped by model.
    by_model: defaultdict[tuple[int, dt.date, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in entries.values():
        line = by_model[(e.user_id, e.period, e.model)]
        line[0] += 1
        line[1] += e.input_tokens
        line[2] += e.output_tokens
        line[3] += e.billed_tokens
    for model_row in model_rows:
        figures = [model_row.runs, model_row.input_tokens, model_row.output_tokens, model_row.billed_tokens]
        if figures != by_model.pop((model_row.user_id, model_row.period, model_row.model), [0, 0, 0, 0]):
            problems.append(
                f"user {model_row.user_id} {model_row.period:%Y-%m} {model_row.model}: "
                f"by_model {figures} differs from the ledger"
            )
    for model_key, figures in by_model.items():
        problems.append(
            f"user {model_key[0]} {model_key[1]:%Y-%m} {model_key[2]}: ledger {figures} has no by_model row"
        )

    # 5. The usage history's daily lines add up, per user and month, to the counters.
    months = (
        day_lines.annotate(month=TruncMonth("day"))
        .values("user_id", "month")
        .annotate(runs=Sum("runs"), billed=Sum("billed_tokens"))
    )
    lines = {(m["user_id"], m["month"]): (m["billed"], m["runs"]) for m in months}
    for row in usage_rows:
        summed = lines.pop((row.user_id, row.period), (0, 0))
        if summed != (row.tokens_used, row.runs_used):
            problems.append(
                f"user {row.user_id} {row.period:%Y-%m}: usage lines billed/runs {summed[0]}/{summed[1]}, "
                f"counters {row.tokens_used}/{row.runs_used}"
            )
    for (user_id, month), summed in lines.items():
        if summed != (0, 0):
            problems.append(f"user {user_id} {month:%Y-%m}: usage lines {summed} without a counter row")

    summary = {
        "runs": runs.count(),
        "terminal": runs.filter(status__in=TERMINAL_STATUSES).count(),
        "ledger_rows": len(entries),
        "billed_tokens": sum(e.billed_tokens for e in entries.values()),
        "usage_rows": usage_rows.count(),
    }
    return summary, problems
