"""GET /metrics: the Prometheus text format, for a scraper holding MASCHINA_METRICS_TOKEN."""

import hmac
import os

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from .errors import error_response
from .metrics import QueueDepthCollector

_QUEUE_DEPTH = CollectorRegistry()
_QUEUE_DEPTH.register(QueueDepthCollector())


def _authorized(request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), settings.METRICS_TOKEN.encode())


def metrics(request):
    if not settings.METRICS_TOKEN:
        return error_response("not_found", "Not found.", 404)
    if not _authorized(request):
        response = error_response("not_authenticated", "GET /metrics needs its bearer token.", 401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # every process's samples, summed
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    body = generate_latest(registry) + generate_latest(_QUEUE_DEPTH)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
