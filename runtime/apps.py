import os

from django.apps import AppConfig
from django.conf import settings


class RuntimeConfig(AppConfig):
    name = "runtime"

    def ready(self):
        # kombu's filesystem transport (the embedded default broker) needs its folders to exist
        # in the web process and in the worker alike.
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            for folder in set(settings.CELERY_BROKER_TRANSPORT_OPTIONS.values()):
                os.makedirs(folder, exist_ok=True)
