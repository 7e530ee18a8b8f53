from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from agents import views as agents
from billing import views as billing
from routing import views as routing
from runs import async_views as held
from runs import views as runs

from .errors import handler404 as handler404_view
from .health import healthz

api = [
    path("tiers", routing.TierListApi.as_view()),
    path("models", routing.ModelListApi.as_view()),
    path("agents", agents.AgentListCreateApi.as_view()),
    path("agents/<uuid:agent_id>", agents.AgentDetailApi.as_view()),
    path("agents/<uuid:agent_id>/run", held.run_create),
    path("agents/<uuid:agent_id>/runs", runs.AgentRunListApi.as_view()),
    path("runs", runs.RunListApi.as_view()),
    path("runs/<uuid:run_id>", held.run_detail),
    path("runs/<uuid:run_id>/events", held.run_events),
    path("runs/<uuid:run_id>/cancel", runs.RunCancelApi.as_view()),
    path("usage", billing.UsageApi.as_view()),
    path("alerts", billing.AlertListApi.as_view()),
]

urlpatterns = [
    path("api/v1/", include(api)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("healthz", csrf_exempt(healthz)),
    path("admin/", admin.site.urls),
    # Anything else: the JSON 404 (Django's DEBUG page is HTML).
    re_path(r"^", csrf_exempt(handler404_view)),
]

handler400 = "maschina.errors.handler400"
handler403 = "maschina.errors.handler403"
handler404 = "maschina.errors.handler404"
handler500 = "maschina.errors.handler500"
