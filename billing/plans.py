"""A user's plan: their tier, their overrides of its monthly limits, and the limits that follow."""

from dataclasses import dataclass

from routing.models import Tier
from routing.selectors import DEFAULT_TIER
from routing.snapshot import get_rules

from .models import Plan


@dataclass(frozen=True)
class Limits:
    tokens: int | None  # None = unlimited
    runs: int | None
    exempt: bool  # skips both checks (internal)


def limits_for(plan: Plan, tier) -> Limits:
    """The monthly limits of a plan: the user's overrides, else the tier's. `tier` is a TierInfo."""
    if tier.quota_exempt:
        return Limits(None, None, True)
    tokens = plan.token_quota_override if plan.token_quota_override is not None else tier.monthly_token_quota
    runs = plan.run_quota_override if plan.run_quota_override is not None else tier.monthly_run_quota
    return Limits(tokens, runs, False)


def token_limit(tier_id: str | None, token_quota_override: int | None) -> int | None:
    """A monthly token limit (None: unlimited or exempt), from a plan's tier and override as the
    settlement statement returns them."""
    tier_id = tier_id or DEFAULT_TIER
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
