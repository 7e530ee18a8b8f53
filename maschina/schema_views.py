"""The schema (/api/schema/) and docs (/api/docs/) views, answering their errors as JSON."""

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer


class JsonErrorsMixin:
    """Errors of the schema and docs views as JSON (CONTRACT section 1): their renderers are YAML,
    OpenAPI JSON and HTML, which DRF would otherwise also pick for a 404 on `?format=xml` or a 405."""

    def finalize_response(self, request, response, *args, **kwargs):
        if response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


class SchemaView(JsonErrorsMixin, SpectacularAPIView):
    pass


class DocsView(JsonErrorsMixin, SpectacularSwaggerView):
    pass
