"""The admin's dashboards: a month's usage over every user, and one user's page (plan, overrides,
usage this month, keys and recent runs). Charts are server-side SVG (maschina.charts)."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.utils import timezone

from billing.periods import parse_period, period_of
from maschina.charts import bar_chart

from .dashboards import usage_overview, user_overview


def _period(request):
    try:
        return parse_period(request.GET["period"])
    except (KeyError, ValueError):
        return period_of(timezone.now())


def _day(label: str) -> str:
    return label[8:]  # YYYY-MM-DD: the day of the month


def _context(request, title, period, **extra):
    if not request.user.has_perm("billing.view_usageperiod"):
        raise PermissionDenied
    return {**admin.site.each_context(request), "title": title, "period": period, **extra}


def usage_dashboard(request):
    period = _period(request)
    data = usage_overview(period)
    charts = [
        bar_chart("tokens-per-day", data["tokens_per_day"], title="Billed tokens per day", tick=_day),
        bar_chart("tokens-by-model", data["by_model"], title="Billed tokens by model"),
        bar_chart("top-users", data["top_users"], title="Top users by billed tokens"),
        bar_chart("runs-by-status", data["runs_by_status"], title="Runs by status"),
        bar_chart("failures-by-code", data["failures"], title="Failed and timed-out runs by error code"),
    ]
    context = _context(request, f"Usage {period:%Y-%m}", period, data=data, charts=charts)
    return TemplateResponse(request, "admin/dashboards/usage.html", context)


def user_dashboard(request, user_id: int):
    get_object_or_404(get_user_model(), pk=user_id)
    period = _period(request)
    data = user_overview(user_id, period)
    chart = bar_chart("user-tokens-per-day", data["tokens_per_day"], title="Billed tokens per day", tick=_day)
    context = _context(request, f"{data['subject'].username}: plan and usage", period, data=data, chart=chart)
    return TemplateResponse(request, "admin/dashboards/user.html", context)


usage_view = admin.site.admin_view(usage_dashboard)
user_view = admin.site.admin_view(user_dashboard)
