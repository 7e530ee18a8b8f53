"""Publishing a run's execution. A publish that fails is logged and left to the sweeper: the run is
already committed as queued, so it is never lost (CONTRACT section 5: 202 even with the broker down)."""
import logging

from django.conf import settings
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import KombuError

logger = logging.getLogger(__name__)

try:  # the Redis client is only there when the broker is Redis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover
    RedisError = KombuError


def task_time_limits(timeout_secs: int) -> tuple[int, int]:
    """(soft, hard) Celery time limits of the execution of a run with this timeout."""
    return timeout_secs + settings.TASK_SOFT_MARGIN_SECS, timeout_secs + settings.TASK_HARD_MARGIN_SECS


def dispatch_run(run_id, timeout_secs: int) -> bool:
    from agents.models import Run

    from .tasks import execute_run

    soft, hard = task_time_limits(timeout_secs)
    try:
        # Task id = run id: the run is findable in any Celery tool, and a duplicate publish is the same task.
        execute_run.apply_async(args=[str(run_id)], task_id=str(run_id), soft_time_limit=soft, time_limit=hard)
    except (KombuError, RedisError, OSError) as exc:
        logger.warning("run %s not dispatched (%s); the sweeper will retry", run_id, exc)
        return False
    Run.objects.filter(pk=run_id).update(dispatched_at=timezone.now(), dispatches=F("dispatches") + 1)
    return True
