"""What the admin's dashboards show: a month's usage over every user, and one user's page. Read from
the counter rows (billing's usage lines and periods) wherever they hold it; only the runs by status
and the failures by error code count the month's runs themselves."""

import datetime as dt
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Count, Sum
from django.db.models.fields.json import KeyTextTransform

from accounts.models import ApiKey
from billing.models import UsageDay, UsagePeriod
from billing.periods import period_end
from billing.plans import limits_for
from billing.selectors import plan_for, usage_report
from routing.snapshot import get_rules

from .models import Run, RunStatus

TOP_USERS = 10
RECENT_RUNS = 20


def _days(period: dt.date) -> list[dt.date]:
    last = period_end(period).date()
    return [period + dt.timedelta(days=n) for n in range((last - period).days)]


def tokens_per_day(period: dt.date, user_id: int | None = None) -> list[tuple[str, int]]:
    """Billed tokens of each day of the month, days without any included."""
    lines = UsageDay.objects.filter(day__gte=period, day__lt=period_end(period).date())
    if user_id is not None:
        lines = lines.filter(user_id=user_id)
    billed = dict(lines.values_list("day").annotate(Sum("billed_tokens")).order_by())
    return [(day.isoformat(), billed.get(day, 0)) for day in _days(period)]


def _share(used: int, limit: int | None) -> float | None:
    if limit is None:
        return None
    return 100.0 if limit == 0 and used else (100.0 * used / limit if limit else 0.0)


@dataclass(frozen=True)
class UserShare:
    """A user's counters for the month beside their limits; shares in percent, None when unlimited."""

    user: object
    username: str
    tier: str
    tokens_used: int
    tokens_reserved: int
    token_limit: int | None
    token_share: float | None
    runs_used: int
    run_limit: int | None
    run_share: float | None


def usage_overview(period: dt.date) -> dict:
    month = {"day__gte": period, "day__lt": period_end(period).date()}
    by_model = list(
        UsageDay.objects.filter(**month)
        .values("model")
        .annotate(runs=Sum("runs"), billed=Sum("billed_tokens"))
        .order_by("-billed", "model")
    )
    rows = UsagePeriod.objects.filter(period=period).select_related("user", "user__plan")
    tiers = get_rules().tiers
    users = []
    for row in rows:
        plan = plan_for(row.user)
        limits = limits_for(plan, tiers[plan.tier_id])
        users.append(
            UserShare(
                user=row.user,
                username=row.user.get_username(),
                tier=plan.tier_id,
                tokens_used=row.tokens_used,
                tokens_reserved=row.tokens_reserved,
                token_limit=limits.tokens,
                token_share=_share(row.tokens_used, limits.tokens),
                runs_used=row.runs_used,
                run_limit=limits.runs,
                run_share=_share(row.runs_used, limits.runs),
            )
        )
    users.sort(key=lambda u: (-u.tokens_used, -u.runs_used, u.username))
    runs = Run.objects.filter(period=period)
    by_status = dict(runs.values_list("status").annotate(Count("id")).order_by())
    failures = (
        runs.filter(status__in=[RunStatus.FAILED, RunStatus.TIMED_OUT])
        .annotate(code=KeyTextTransform("code", "error"))
        .values("code")
        .annotate(n=Count("id"))
        .order_by("-n", "code")
    )
    return {
        "tokens_per_day": tokens_per_day(period),
        "by_model": [(m["model"], m["billed"]) for m in by_model],
        "by_model_rows": by_model,
        "top_users": [(u.username, u.tokens_used) for u in users[:TOP_USERS]],
        "users": users,
        "runs_by_status": [(s.value, by_status.get(s.value, 0)) for s in RunStatus],
        "failures": [(f["code"] or "none", f["n"]) for f in failures],
    }


def user_overview(user_id: int, period: dt.date) -> dict:
    user = get_user_model().objects.select_related("plan").get(pk=user_id)
    plan = plan_for(user)
    tier = get_rules().tiers[plan.tier_id]
    limits = limits_for(plan, tier)
    return {
        "subject": user,
        "plan": plan,
        "tier": tier,
        "limits": limits,
        "usage": usage_report(user=user, tier_slug=tier.slug, limits=limits, period=period),
        "tokens_per_day": tokens_per_day(period, user.pk),
        "keys": list(ApiKey.objects.filter(user=user).order_by("-created_at")),
        "runs": list(
            Run.objects.filter(user=user)
            .order_by("-created_at", "-id")
            .only("id", "status", "model", "billed_tokens", "error", "created_at", "agent_id")[:RECENT_RUNS]
        ),
    }
