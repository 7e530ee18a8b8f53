"""A user's plan: their tier, their overrides of its monthly limits, and the limits that follow."""

from dataclasses import dataclass

from routing.models import Tier
from routing.selectors import DEFAULT_TIER
from routing.snapshot import get_rules

from .models import Plan

UNLIMITED = "unlimited"  # plan_set's value that lifts a rate limit whatever the tier's


@dataclass(frozen=True)
class Limits:
    tokens: int | None  # None = unlimited
    runs: int | None
    exempt: bool  # skips both quota checks (internal)
    per_minute: int | None = None  # CONTRACT section 11; None = unlimited
    concurrent: int | None = None


def _rate_limit(override: int | None, unlimited: bool, tier_value: int | None) -> int | None:
    if unlimited:
        return None
    return override if override is not None else tier_value


def limits_for(plan: Plan, tier) -> Limits:
    """The limits of a plan: the user's overrides, else the tier's. `tier` is a TierInfo. The rate
    limits are not quotas: an exempt tier skips the quotas only."""
    per_minute = _rate_limit(
        plan.requests_per_minute_override, plan.requests_per_minute_unlimited, tier.requests_per_minute
    )
    concurrent = _rate_limit(
        plan.max_concurrent_runs_override, plan.max_concurrent_runs_unlimited, tier.max_concurrent_runs
    )
    if tier.quota_exempt:
        return Limits(None, None, True, per_minute, concurrent)
    tokens = plan.token_quota_override if plan.token_quota_override is not None else tier.monthly_token_quota
    runs = plan.run_quota_override if plan.run_quota_override is not None else tier.monthly_run_quota
    return Limits(tokens, runs, False, per_minute, concurrent)


def token_limit(tier_id: str | None, token_quota_override: int | None) -> int | None:
    """A monthly token limit (None: unlimited or exempt), from a plan's tier and override as the
    settlement statement returns them."""
    tier_id = tier_id or DEFAULT_TIER
    plan = Plan(tier_id=tier_id, token_quota_override=token_quota_override)
    return limits_for(plan, get_rules().tiers[tier_id]).tokens


def plan_set(
    *,
    user,
    tier_slug: str,
    token_quota=...,
    run_quota=...,
    requests_per_minute=...,
    max_concurrent_runs=...,
) -> Plan:
    """Put a user on a tier; `...` leaves an override as it is, None removes it, and for the rate
    limits UNLIMITED lifts the limit."""
    tier = Tier.objects.get(slug=tier_slug)
    # One save, so a new plan is recorded by the audit as one creation with its overrides.
    plan = Plan.objects.filter(user=user).first() or Plan(user=user)
    plan.tier = tier
    if token_quota is not ...:
        plan.token_quota_override = token_quota
    if run_quota is not ...:
        plan.run_quota_override = run_quota
    for limit, value in (
        ("requests_per_minute", requests_per_minute),
        ("max_concurrent_runs", max_concurrent_runs),
    ):
        if value is not ...:
            setattr(plan, f"{limit}_unlimited", value == UNLIMITED)
            setattr(plan, f"{limit}_override", None if value in (None, UNLIMITED) else value)
    plan.full_clean()
    plan.save()
    user.plan = plan  # the caller's user object must not keep a stale cached plan
    return plan
