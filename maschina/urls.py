from django.contrib import admin
from django.urls import include, path, re_path, register_converter
from django.views.decorators.csrf import csrf_exempt

from accounts import views as accounts
from agents import views as agents
from billing import views as billing
from routing import views as routing
from runs import admin_views as runs_admin
from runs import async_views as held
from runs import views as runs

from . import scrape
from .converters import AnyCaseUUIDConverter
from .errors import handler404 as handler404_view
from .health import healthz
from .home import home
from .schema_views import DocsView, SchemaView

register_converter(AnyCaseUUIDConverter, "anyuuid")

api = [
    path("tiers", routing.TierListApi.as_view()),
    path("models", routing.ModelListApi.as_view()),
    path("agents", agents.AgentListCreateApi.as_view()),
    path("agents/<anyuuid:agent_id>", agents.AgentDetailApi.as_view()),
    path("agents/<anyuuid:agent_id>/run", held.run_create),
    path("agents/<anyuuid:agent_id>/runs", runs.AgentRunListApi.as_view()),
    path("runs", runs.RunListApi.as_view()),
    path("runs/<anyuuid:run_id>", held.run_detail),
    path("runs/<anyuuid:run_id>/events", held.run_events),
    path("runs/<anyuuid:run_id>/cancel", runs.RunCancelApi.as_view()),
    path("keys", accounts.KeyListCreateApi.as_view()),
    path("keys/<anyuuid:key_id>", accounts.KeyDetailApi.as_view()),
    path("usage", billing.UsageApi.as_view()),
    path("usage/history", billing.UsageHistoryApi.as_view()),
    path("alerts", billing.AlertListApi.as_view()),
]

urlpatterns = [
    path("api/v1/", include(api)),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", DocsView.as_view(url_name="schema"), name="docs"),
    path("", home),
    path("healthz", csrf_exempt(healthz)),
    path("metrics", scrape.metrics),
    path("admin/dashboards/usage/", runs_admin.usage_view, name="admin-dashboard-usage"),
    path("admin/dashboards/users/<int:user_id>/", runs_admin.user_view, name="admin-dashboard-user"),
    path("admin/", admin.site.urls),
    # Anything else: the JSON 404 (Django's DEBUG page is HTML).
    re_path(r"^", csrf_exempt(handler404_view)),
]

handler400 = "maschina.errors.handler400"
handler403 = "maschina.errors.handler403"
handler404 = "maschina.errors.handler404"
handler500 = "maschina.errors.handler500"
