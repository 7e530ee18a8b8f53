"""Periodic repair (celery beat, or the worker's -B): no committed run is lost and none stays
active forever (CONTRACT section 7).

- A run still queued SWEEP_REDISPATCH_AFTER_SECS after its last dispatch (or never dispatched: the
  broker was down at admission) is dispatched again; a duplicate delivery loses its claim, harmlessly.
- A run executing past its timeout plus grace had a worker that died: it ends timed_out (or
  completed, if the provider's answer was recorded) and is settled.
- A terminal run left unsettled (canceled while executing, its worker gone) is settled."""
import datetime as dt
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from agents.models import TERMINAL_STATUSES, Run, RunStatus
from billing.services import usage_settle

from .dispatch import dispatch_run
from .services import run_deadline, run_finish, timeout_error

logger = logging.getLogger(__name__)
BATCH = 500


def sweep(now=None) -> dict:
    now = now or timezone.now()
    grace = dt.timedelta(seconds=settings.SWEEP_REAP_GRACE_SECS)
    stale = now - dt.timedelta(seconds=settings.SWEEP_REDISPATCH_AFTER_SECS)

    redispatched = 0
    queued = Run.objects.filter(status=RunStatus.QUEUED).filter(
        Q(dispatched_at__lt=stale) | Q(dispatched_at__isnull=True, created_at__lt=now - dt.timedelta(seconds=2))
    )
    for run_id, timeout_secs in queued.order_by("created_at").values_list("id", "timeout_secs")[:BATCH]:
        redispatched += dispatch_run(run_id, timeout_secs)

    reaped = 0
    for run in Run.objects.filter(status=RunStatus.EXECUTING, started_at__lt=now - grace).order_by("started_at")[:BATCH]:
        if run_deadline(run) + grace >= now:
            continue
        if run.input_tokens is not None:
            run_finish(run.pk, RunStatus.COMPLETED)
        else:
            run_finish(run.pk, RunStatus.TIMED_OUT, timeout_error(run))
        reaped += 1

    settled = 0
    unsettled = Run.objects.filter(status__in=TERMINAL_STATUSES, settled_at__isnull=True, finished_at__lt=now - grace)
    for run_id in unsettled.values_list("id", flat=True)[:BATCH]:
        settled += usage_settle(run_id)

    if redispatched or reaped or settled:
        logger.info("sweep: redispatched %d, reaped %d, settled %d", redispatched, reaped, settled)
    return {"redispatched": redispatched, "reaped": reaped, "settled": settled}
