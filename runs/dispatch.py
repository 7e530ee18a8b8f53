"""Publishing a run's execution. A publish that fails is logged and left to the sweeper: the run is
already committed as queued, so it is never lost (CONTRACT section 5: 202 even with the broker down).
After one failure, admissions skip publishing until the broker answers a probe again
(maschina.broker_circuit), so they do not wait on a broker that is down."""

import datetime as dt
import logging

from django.conf import settings
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import KombuError

from maschina.broker import RedisError, task_publisher
from maschina.broker_circuit import broker_circuit

from .models import Run, RunStatus

logger = logging.getLogger(__name__)


def task_time_limits(timeout_secs: int) -> tuple[int, int]:
    """(soft, hard) Celery time limits of the execution of a run with this timeout."""
    return timeout_secs + settings.TASK_SOFT_MARGIN_SECS, timeout_secs + settings.TASK_HARD_MARGIN_SECS


def redispatch_delay(dispatches: int) -> dt.timedelta:
    """How long after its n-th publish a still-queued run may be published again: the sweeper
    finds a message Redis lost, without flooding a long backlog (30 s, 60 s, ... capped at 64x)."""
    return dt.timedelta(seconds=settings.SWEEP_REDISPATCH_AFTER_SECS * 2 ** min(max(dispatches - 1, 0), 6))


BAND_GROWTH = 8  # how many times more runs in flight each priority band holds than the one before


def fair_priority(in_flight: int) -> int:
    """The message priority of a run admitted with `in_flight` runs of its user in flight, itself
    included: a user's first FAIR_SHARE runs in flight go to the step the broker serves first, and
    a burst's further runs to later steps (8x, 64x FAIR_SHARE, then the rest), so another user's
    few runs are served ahead of one user's backlog. Within a step the queue stays FIFO."""
    *steps, last = settings.BROKER_PRIORITY_STEPS
    bound = settings.FAIR_SHARE
    for step in steps:
        if in_flight <= bound:
            return step
        bound *= BAND_GROWTH
    return last


def admission_dispatch(now: dt.datetime) -> dict:
    """The dispatch fields of a run admitted at `now`, written by its INSERT: admission publishes it
    right after the commit, so recording the publish ahead saves an UPDATE on every run. A publish
    that fails undoes them (publish_admitted), and the sweeper publishes the run 2 s after its
    creation. A web process that dies between the commit and the publish leaves a run that looks
    published: the sweeper publishes it at redispatch_at, as it does a message Redis lost."""
    if broker_circuit.is_open:  # no publish will be tried: the sweeper dispatches it
        return {"dispatched_at": None, "dispatches": 0, "redispatch_at": None}
    return {"dispatched_at": now, "dispatches": 1, "redispatch_at": now + redispatch_delay(1)}


def publish_admitted(run_id, timeout_secs: int, priority: int = 0) -> bool:
    """Publish a run admitted with admission_dispatch() at `priority` (fair_priority); on failure,
    or with the broker's circuit open, mark it never published."""
    if not broker_circuit.is_open and _publish(run_id, timeout_secs, queued=True, priority=priority):
        return True
    Run.objects.filter(pk=run_id, status=RunStatus.QUEUED, dispatches=1).update(
        dispatched_at=None, dispatches=0, redispatch_at=None
    )
    return False


def dispatch_run(run_id, timeout_secs: int, dispatches: int = 0, priority: int = 0) -> bool:
    """Publish the run's task again at `priority` (the sweeper); `dispatches` is how often it was
    published before."""
    if not _publish(run_id, timeout_secs, priority=priority):
        return False
    now = timezone.now()
    Run.objects.filter(pk=run_id).update(
        dispatched_at=now,
        dispatches=F("dispatches") + 1,
        redispatch_at=now + redispatch_delay(dispatches + 1),
    )
    return True


def _publish(run_id, timeout_secs: int, *, queued: bool = False, priority: int = 0) -> bool:
    """Publish the run's task with time limits for `timeout_secs`. A `queued` run's message also
    carries its timeout: the worker then claims it in one statement (runs.services.run_claim).
    Redis serves the lower `priority` first; the embedded default's filesystem broker ignores it."""
    from .tasks import execute_run

    soft, hard = task_time_limits(timeout_secs)
    kwargs = {"timeout_secs": timeout_secs} if queued else {}
    try:
        publisher = task_publisher()  # Redis: the message apply_async would write, in one LPUSH
        # Task id = run id: the run is findable in any Celery tool, and a duplicate publish is the same task.
        if publisher is not None:
            publisher.publish(
                execute_run.name,
                [str(run_id)],
                kwargs,
                task_id=str(run_id),
                queue=settings.CELERY_TASK_DEFAULT_QUEUE,
                priority=priority,
                time_limits=(soft, hard),
            )
        else:
            execute_run.apply_async(
                args=[str(run_id)],  # type: ignore[arg-type]  # celery-stubs want a tuple; any sequence does
                kwargs=kwargs,
                task_id=str(run_id),
                soft_time_limit=soft,
                time_limit=hard,
                priority=priority,
            )
    except (KombuError, RedisError, OSError) as exc:
        logger.warning("run %s not dispatched (%s); the sweeper will retry", run_id, exc)
        broker_circuit.failed()
        return False
    broker_circuit.succeeded()
    return True
