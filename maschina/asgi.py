import os

# Read by the settings: under ASGI every request's sync code runs on a thread of its own, so database
# connections come from a pool rather than being kept per thread (they would outlive their threads).
os.environ.setdefault("MASCHINA_ASGI", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maschina.settings")

import django

django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application() does, with our handler

# Imported once the settings are loaded, as they read them.
from django.conf import settings  # noqa: E402
from django.core import signals  # noqa: E402

from .asgi_handler import REQUEST_STARTED_HOPS, ASGIHandler  # noqa: E402
from .request_bodies import capped_asgi_body  # noqa: E402

for receiver in REQUEST_STARTED_HOPS:
    signals.request_started.disconnect(receiver)

application = capped_asgi_body(ASGIHandler(), settings.MAX_REQUEST_BODY_BYTES + 1)
