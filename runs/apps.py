import os

from celery.signals import task_postrun, task_prerun
from django.apps import AppConfig
from django.conf import settings
from django.db import close_old_connections


class RunsConfig(AppConfig):
    name = "runs"

    def ready(self):
        from routing.protection import referrer_register

        from .selectors import runs_referencing

        referrer_register(runs_referencing)
        # kombu's filesystem transport (the embedded default broker) needs its folders to exist
        # in the web process and in the worker alike.
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            for folder in set(settings.CELERY_BROKER_TRANSPORT_OPTIONS.values()):
                os.makedirs(folder, exist_ok=True)
        # A worker keeps its database connection across tasks (CELERY_DB_REUSE_MAX) and treats each
        # task as Django treats a request: before and after it, a connection that had errors and fails
        # its check, or is older than CONN_MAX_AGE, is closed (the next query opens a new one).
        task_prerun.connect(_close_old_connections, dispatch_uid="runs.close_old_connections.prerun")
        task_postrun.connect(_close_old_connections, dispatch_uid="runs.close_old_connections.postrun")


def _close_old_connections(**kwargs):
    close_old_connections()
