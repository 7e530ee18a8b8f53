"""The worker's Celery pool: Celery's threads pool, with a worker's concurrency counting the runs a
process holds in flight rather than its threads. A run's task only claims the run and hands it to the
provider loop (runs.execution.start), so a few threads deliver them all, and the worker reserves no more
messages than they take: a backlog stays in the broker, where another node can take it. A warm shutdown
waits for the runs the process holds to end."""

import logging

from celery.concurrency import thread

logger = logging.getLogger(__name__)
DELIVERY_THREADS = 8  # claims at once; more only wait for the work slots (RUN_WORK_SLOTS)


def configure(worker) -> None:
    """At worker_init, before the pool and the consumer are made: the concurrency the worker was given
    becomes its capacity of runs, and Celery's own (threads, messages reserved) DELIVERY_THREADS."""
    from . import execution  # once Django is set up

    execution.set_capacity(worker.concurrency)
    logger.info(
        "holding up to %d runs in flight, delivered by %d threads", worker.concurrency, DELIVERY_THREADS
    )
    worker.concurrency = min(worker.concurrency, DELIVERY_THREADS)


def warm_up() -> None:
    """Once the worker is ready, before its first run: what every run uses and the first ones would
    otherwise make (the work threads and their database pool, the provider clients), so that a run
    costs only itself and the node's idle size includes the rest."""
    from providers import anthropic

    from . import execution

    execution.warm_up()
    anthropic.warm_up()


class TaskPool(thread.TaskPool):
    def on_stop(self):
        from . import execution

        execution.drain()
        super().on_stop()
