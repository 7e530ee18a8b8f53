"""Reserve -> settle, all in the database (CONTRACT section 6).

quota_reserve runs inside the caller's admission transaction; usage_settle inside the worker's
finishing transaction. Both touch counters only through conditional UPDATEs with F() expressions:
PostgreSQL re-checks the WHERE clause of an UPDATE that waited for a row lock, so two concurrent
admissions cannot both take the last tokens."""
import datetime as dt
from dataclasses import dataclass

from django.db import transaction
from django.db.models import F
from django.utils import timezone

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


def quota_reserve(*, user_id: int, period: dt.date, tokens: int, limits: Limits) -> None:
    """Count one run and reserve `tokens` against the period, or raise QuotaExceeded.

    Must run inside a transaction that also records the run, so a failure after it undoes it."""
    UsagePeriod.objects.bulk_create([UsagePeriod(user_id=user_id, period=period)], ignore_conflicts=True)
    rows = UsagePeriod.objects.filter(user_id=user_id, period=period)
    admit = rows
    # A 0-token reservation (a 0x model) is admitted even at a token limit of 0 (CONTRACT section 6).
    checks_tokens = limits.tokens is not None and tokens > 0
    if checks_tokens:
        admit = admit.filter(tokens_used__lte=limits.tokens - tokens - F("tokens_reserved"))
    if limits.runs is not None:
        admit = admit.filter(runs_used__lte=limits.runs - 1)
    for _ in range(3):
        if admit.update(tokens_reserved=F("tokens_reserved") + tokens, runs_used=F("runs_used") + 1):
            if limits.runs:
                runs_used = rows.values_list("runs_used", flat=True).get()
                alerts_record(user_id=user_id, period=period, quota="runs", used=runs_used, limit=limits.runs)
            return
        # Which limit refused it, read under the row lock. A settlement can free room between the
        # refused UPDATE and this read; then nothing is over and the UPDATE is simply tried again.
        usage = rows.select_for_update().get()
        if checks_tokens and usage.tokens_used + usage.tokens_reserved + tokens > limits.tokens:
            raise QuotaExceeded("tokens", usage.tokens_used, limits.tokens, period, usage.tokens_reserved, tokens)
        if limits.runs is not None and usage.runs_used + 1 > limits.runs:
            raise QuotaExceeded("runs", usage.runs_used, limits.runs, period)
    raise AssertionError("the quota UPDATE refused a run that fits")


def usage_settle(run_id) -> bool:
    """Replace a terminal run's reservation by what it actually costs, exactly once.

    Bills the raw usage stored on the run (if the provider reported any) at the run's multiplier,
    writes its ledger row and per-model counters, and releases the reservation. Returns False when
    the run was already settled (a redelivery), having changed nothing."""
    from agents.models import TERMINAL_STATUSES, Run

    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.settled_at is not None or run.status not in TERMINAL_STATUSES:
            return False
        has_usage = run.input_tokens is not None and run.output_tokens is not None
        billed = billed_tokens(run.input_tokens, run.output_tokens, run.multiplier) if has_usage else 0
        Run.objects.filter(pk=run.pk).update(settled_at=timezone.now(), billed_tokens=billed if has_usage else None)
        if has_usage:
            LedgerEntry.objects.create(
                run_id=run.pk,
                user_id=run.user_id,
                period=run.period,
                model=run.model,
                input_tokens=run.input_tokens,
                output_tokens=run.output_tokens,
                multiplier=run.multiplier,
                billed_tokens=billed,
            )
            key = {"user_id": run.user_id, "period": run.period, "model": run.model}
            ModelUsage.objects.bulk_create([ModelUsage(**key)], ignore_conflicts=True)
            ModelUsage.objects.filter(**key).update(
                runs=F("runs") + 1,
                input_tokens=F("input_tokens") + run.input_tokens,
                output_tokens=F("output_tokens") + run.output_tokens,
                billed_tokens=F("billed_tokens") + billed,
            )
        counters = UsagePeriod.objects.filter(user_id=run.user_id, period=run.period)
        counters.update(tokens_used=F("tokens_used") + billed, tokens_reserved=F("tokens_reserved") - run.reserved_tokens)
        limit = _token_limit(run.user_id) if billed else None
        if limit:
            used = counters.values_list("tokens_used", flat=True).get()
            alerts_record(user_id=run.user_id, period=run.period, quota="tokens", used=used, limit=limit)
    return True


def _token_limit(user_id) -> int | None:
    """The user's monthly token limit now (None: unlimited or exempt)."""
    from routing.snapshot import get_rules

    plan = Plan.objects.filter(user_id=user_id).first() or Plan(user_id=user_id, tier_id=DEFAULT_TIER)
    return limits_for(plan, get_rules().tiers[plan.tier_id]).tokens


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
