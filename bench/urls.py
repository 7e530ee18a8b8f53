"""The product's URLs with the baseline endpoint in front of its catch-all 404."""

from django.urls import include, path

from maschina.urls import handler400, handler403, handler404, handler500
from maschina.urls import urlpatterns as product_urlpatterns

urlpatterns = [path("bench/", include("bench.benchapp.urls")), *product_urlpatterns]

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]
