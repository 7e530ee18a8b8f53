import os

# Read by the settings: under ASGI every request's sync code runs on a thread of its own, so database
# connections come from a pool rather than being kept per thread (they would outlive their threads).
os.environ.setdefault("MASCHINA_ASGI", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maschina.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

# Imported once the settings are loaded, as they read them.
from django.conf import settings  # noqa: E402

from .request_bodies import capped_asgi_body  # noqa: E402

application = capped_asgi_body(django_application, settings.MAX_REQUEST_BODY_BYTES + 1)
