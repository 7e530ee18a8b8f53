import os

# Read by the settings: under ASGI every request's sync code runs on a thread of its own, so database
# connections come from a pool rather than being kept per thread (they would outlive their threads).
os.environ.setdefault("MASCHINA_ASGI", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maschina.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
