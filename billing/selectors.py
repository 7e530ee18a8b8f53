import datetime as dt

from routing.selectors import DEFAULT_TIER

from .models import KeyUsage, ModelUsage, Plan, Throttle, UsagePeriod
from .periods import period_end, period_start
from .plans import Limits
from .throttle import MinuteWindow, bucket_level, window_of


def plan_for(user) -> Plan:
    """The user's plan; a user nobody put on a tier (e.g. a superuser) is on `access`."""
    try:
        return user.plan
    except Plan.DoesNotExist:
        return Plan(user=user, tier_id=DEFAULT_TIER)


def minute_window(*, user_id: int, per_minute: int | None, now: dt.datetime) -> MinuteWindow | None:
    """The user's minute window as it stands, without drawing from it (None without a limit)."""
    if per_minute is None:
        return None
    throttle = Throttle.objects.filter(user_id=user_id).first() or Throttle(user_id=user_id)
    return window_of(per_minute, bucket_level(per_minute, throttle.bucket_used, throttle.bucket_at, now))


def _remaining(limit, used):
    return None if limit is None else max(limit - used, 0)


def usage_report(*, user, tier_slug: str, limits: Limits, period: dt.date) -> dict:
    """GET /usage: three indexed reads of counter rows, never a sum over the ledger."""
    row = UsagePeriod.objects.filter(user=user, period=period).first() or UsagePeriod(
        user=user, period=period
    )
    by_model = ModelUsage.objects.filter(user=user, period=period).order_by("model")
    by_key = (
        KeyUsage.objects.filter(user=user, period=period)
        .order_by("key__created_at", "key_id")
        .values_list("key_id", "key__name", "runs", "tokens_used")
    )
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
        "by_key": [
            {"key": key_id, "name": name, "runs": runs, "billed_tokens": billed}
            for key_id, name, runs, billed in by_key
        ],
    }
