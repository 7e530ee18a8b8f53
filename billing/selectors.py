import datetime as dt

from django.db import connection

from routing.selectors import DEFAULT_TIER

from .models import NO_ID, ModelUsage, Plan, Throttle, UsageDay, UsagePeriod
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


def _by_key(user, period: dt.date) -> list[tuple]:
    """(key id, name, runs, billed tokens) of the month's runs admitted with a key, from the month's
    usage lines (a key has counter rows only when it has a monthly_token_limit to enforce), oldest
    key first; a deleted key's lines are left out, as its runs are. The lines are summed by key
    before the keys are joined, so a month of many lines costs one lookup per key, not per line."""
    key_id = UsageDay._meta.get_field("key_id")
    sql = """
SELECT k.id, k.name, s.runs, s.billed
  FROM (SELECT key_id, CAST(SUM(runs) AS BIGINT) AS runs, CAST(SUM(billed_tokens) AS BIGINT) AS billed
          FROM billing_usageday
         WHERE user_id = %s AND day >= %s AND day < %s AND key_id <> %s
         GROUP BY key_id) AS s
  JOIN accounts_apikey AS k ON k.id = s.key_id
 ORDER BY k.created_at, k.id"""
    day = UsageDay._meta.get_field("day")
    params = [
        user.pk,
        day.get_db_prep_value(period, connection),
        day.get_db_prep_value(period_end(period).date(), connection),
        key_id.get_db_prep_value(NO_ID, connection),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [(key_id.to_python(key), name, runs, billed) for key, name, runs, billed in rows]


def usage_report(*, user, tier_slug: str, limits: Limits, period: dt.date) -> dict:
    """GET /usage: three indexed reads of counter rows and of the month's usage lines, never a sum
    over the ledger."""
    row = UsagePeriod.objects.filter(user=user, period=period).first() or UsagePeriod(
        user=user, period=period
    )
    by_model = ModelUsage.objects.filter(user=user, period=period).order_by("model")
    by_key = _by_key(user, period)
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
