"""The Celery application. Settings come from Django's settings module (CELERY_* names)."""

import gc
import os

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maschina.settings")

app = Celery("maschina")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["runs", "billing"])


@worker_ready.connect
def _warm_up(sender, **_):
    from runs import worker_pool

    if isinstance(getattr(sender, "pool", None), worker_pool.TaskPool):
        worker_pool.warm_up()


@worker_ready.connect
@worker_process_init.connect
def _freeze_what_is_loaded(**_):
    """What a worker has loaded by the time it takes tasks lives as long as the process: kept out of
    the collector's full passes, which otherwise walk all of it while every run's thread waits."""
    gc.freeze()


@worker_init.connect
def _count_runs_not_threads(sender, **_):
    from runs import worker_pool

    if isinstance(sender.pool_cls, type) and issubclass(sender.pool_cls, worker_pool.TaskPool):
        worker_pool.configure(sender)
