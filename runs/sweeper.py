"""Periodic repair (celery beat, or the worker's -B): no committed run is lost and none stays
active forever (CONTRACT section 7).

- queued: dispatched again 2 s after its creation if it never was (the broker was down at
  admission), else SWEEP_REDISPATCH_AFTER_SECS after its first dispatch, backing off from there (a
  message Redis lost, or one a dying web process never sent, is found again; a duplicate delivery
  loses its claim, harmlessly). At its user's priority now (runs.dispatch.fair_priority): a long
  backlog's runs are published again, and must not jump ahead of other users' runs.
- executing, no heartbeat for HEARTBEAT_STALE_SECS: its worker died. If the provider's answer was
  recorded, the run is finished from it; otherwise it is dispatched again and the next claim takes
  it over (its deadline still counts from its first start), at the first priority.
- executing past its deadline plus SWEEP_REAP_GRACE_SECS: ended as timed_out (or completed, from a
  recorded answer) and settled.
- terminal but unsettled past the grace (canceled while executing, its worker gone): settled.
- quota alerts whose webhook delivery was lost (never enqueued, or its task died): enqueued again."""

import datetime as dt
import logging

from django.conf import settings
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from billing.models import Throttle
from billing.webhooks import undelivered_alerts_requeue

from . import events
from .dispatch import dispatch_run, fair_priority
from .models import TERMINAL_STATUSES, Run, RunStatus
from .services import run_deadline, run_finish, run_settle, stale_before, stale_heartbeat, timeout_error

logger = logging.getLogger(__name__)
BATCH = 500


def sweep(now=None) -> dict:
    now = now or timezone.now()
    grace = dt.timedelta(seconds=settings.SWEEP_REAP_GRACE_SECS)
    counts = {"redispatched": 0, "taken_over": 0, "reaped": 0, "settled": 0}

    # Ending runs comes first: it needs only the database, so a failing broker cannot hold it up.
    # A live worker ends its own run at the deadline; one still executing after the grace is stuck.
    for run in Run.objects.filter(status=RunStatus.EXECUTING, deadline_at__lt=now - grace).order_by(
        "deadline_at"
    )[:BATCH]:
        if run.input_tokens is not None:
            run_finish(run.pk, RunStatus.COMPLETED)
        else:
            run_finish(run.pk, RunStatus.TIMED_OUT, timeout_error(run))
        events.publish_end(run.pk)
        counts["reaped"] += 1

    unsettled = Run.objects.filter(
        status__in=TERMINAL_STATUSES, settled_at__isnull=True, finished_at__lt=now - grace
    )
    for run_id in unsettled.values_list("id", flat=True)[:BATCH]:
        counts["settled"] += run_settle(run_id)

    # No heartbeat: the worker died. Finish from a recorded answer, or let the next claim take it over.
    to_publish = []
    orphans = Run.objects.filter(stale_heartbeat(now), status=RunStatus.EXECUTING).order_by("deadline_at")[
        :BATCH
    ]
    for run in orphans:
        if run.input_tokens is not None:
            run_finish(run.pk, RunStatus.COMPLETED)
            events.publish_end(run.pk)
            counts["reaped"] += 1
        elif run_deadline(run) + grace < now:
            run_finish(run.pk, RunStatus.TIMED_OUT, timeout_error(run))
            events.publish_end(run.pk)
            counts["reaped"] += 1
        elif run_deadline(run) > now and (run.dispatched_at is None or run.dispatched_at < stale_before(now)):
            to_publish.append(
                (
                    "taken_over",
                    run.pk,
                    max(1, int((run_deadline(run) - now).total_seconds())),
                    run.dispatches,
                    0,  # it was started already, and its deadline runs: it waits behind no backlog
                )
            )

    queued = Run.objects.filter(status=RunStatus.QUEUED).filter(
        Q(dispatched_at__isnull=True, created_at__lt=now - dt.timedelta(seconds=2)) | Q(redispatch_at__lt=now)
    )
    in_flight = Subquery(Throttle.objects.filter(user_id=OuterRef("user_id")).values("active_runs"))
    for run_id, timeout_secs, dispatches, runs_in_flight in (
        queued.annotate(in_flight=in_flight)
        .order_by("created_at")
        .values_list("id", "timeout_secs", "dispatches", "in_flight")[:BATCH]
    ):
        priority = fair_priority(runs_in_flight or 0)
        to_publish.append(("redispatched", run_id, timeout_secs, dispatches, priority))

    for kind, run_id, timeout_secs, dispatches, priority in to_publish:
        if not dispatch_run(run_id, timeout_secs, dispatches, priority):
            break  # the broker is failing: the next sweep tries again, without waiting on each publish now
        counts[kind] += 1

    counts["alerts_requeued"] = undelivered_alerts_requeue(now)
    counts["events_purged"] = events.purge_expired(now)

    if any(counts.values()):
        logger.info("sweep: %s", counts)
    return counts
