"""The worker's Celery pool: Celery's threads pool, whose concurrency counts the runs a worker process
holds in flight rather than its threads. A run's task only claims the run and hands it to the provider
loop (runs.execution.start), so a few threads deliver them all; the concurrency bounds the runs held at
once and, as ever, how many messages the worker reserves. A warm shutdown waits for the runs it holds
to end."""

from concurrent.futures import ThreadPoolExecutor

from celery.concurrency import thread
from celery.concurrency.base import BasePool

DELIVERY_THREADS = 8  # claims at once; more only wait for the work slots (RUN_WORK_SLOTS)


class TaskPool(thread.TaskPool):
    def __init__(self, *args, **kwargs):
        from . import execution  # once Django is set up

        BasePool.__init__(self, *args, **kwargs)
        execution.set_capacity(self.limit)
        self.executor = ThreadPoolExecutor(max_workers=min(self.limit, DELIVERY_THREADS))

    def on_stop(self):
        from . import execution

        execution.drain()
        super().on_stop()
