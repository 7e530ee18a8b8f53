"""Celery tasks: thin, named, bounded. The logic is in runs.execution and runs.sweeper."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from maschina import metrics

from . import execution, sweeper


# Database outages are retried with capped backoff (every delay far below the broker's visibility
# timeout); the run itself is idempotent, so a retry or a redelivery never bills twice. The time
# limits are set per run when it is dispatched (runs.dispatch.task_time_limits). The task names are
# the wire format of messages already queued, so they kept the name of the app the tasks came from.
@shared_task(
    bind=True,
    name="runtime.execute_run",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=20,
)
def execute_run(self, run_id: str, timeout_secs: int | None = None) -> None:
    # A delivery to a worker on the project's pool ends once the run is claimed (it goes on, threadless,
    # on the provider loop); one called directly, eagerly, or on another pool runs it to its end.
    if self.request.called_directly or self.request.is_eager or not execution.detaches():
        execution.execute(run_id, timeout_secs)
    else:
        execution.start(run_id, timeout_secs)


@shared_task(name="runtime.sweep_runs", acks_late=True, soft_time_limit=60, time_limit=90, ignore_result=True)
def sweep_runs() -> dict:
    return metrics.sweeper_actions(sweeper.sweep())
