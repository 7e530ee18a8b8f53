import datetime as dt

from routing.selectors import DEFAULT_TIER

from .models import ModelUsage, Plan, UsagePeriod
from .periods import period_end, period_start
from .plans import Limits


def plan_for(user) -> Plan:
    """The user's plan; a user nobody put on a tier (e.g. a superuser) is on `access`."""
    try:
        return user.plan
    except Plan.DoesNotExist:
        return Plan(user=user, tier_id=DEFAULT_TIER)


def _remaining(limit, used):
    return None if limit is None else max(limit - used, 0)


def usage_report(*, user, tier_slug: str, limits: Limits, period: dt.date) -> dict:
    """GET /usage: two indexed reads of counter rows, never a sum over the ledger."""
    row = UsagePeriod.objects.filter(user=user, period=period).first() or UsagePeriod(
        user=user, period=period
    )
    by_model = ModelUsage.objects.filter(user=user, period=period).order_by("model")
    return {
        "tier": tier_slug,
        "period": {"start": period_start(period), "end": period_end(period)},
        "tokens": {
            "used": row.tokens_used,
            "reserved": row.tokens_reserved,
            "limit": limits.tokens,
            "remaining": _remaining(limits.tokens, row.tokens_used + row.tokens_reserved),
        },
        "runs": {
            "used": row.runs_used,
            "limit": limits.runs,
            "remaining": _remaining(limits.runs, row.runs_used),
        },
        "by_model": [
            {
                "model": m.model,
                "runs": m.runs,
                "input_tokens": m.input_tokens,
                "output_tokens": m.output_tokens,
                "billed_tokens": m.billed_tokens,
            }
            for m in by_model
        ],
    }
