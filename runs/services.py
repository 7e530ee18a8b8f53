"""Every write of a run after its admission: its state transitions, each one conditional UPDATE, so
two deliveries of the same task, a cancel and the sweeper can race without two of them winning the
same step.

Every claim draws a fresh token; the worker's later writes (heartbeat, fallback switch, recording
the provider's answer, finishing) only apply while the run still carries its token. A run whose
worker died (no heartbeat for HEARTBEAT_STALE_SECS) can be claimed again, which changes the token, so
the dead worker, should it come back, can no longer write anything."""

import datetime as dt
import uuid

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.pricing import billed_tokens
from billing.settlement import (
    Counters,
    SettledRun,
    counters_of,
    over_reservation_note,
    token_alerts_record,
    usage_record,
)
from maschina import metrics
from maschina.db.rows import fetch_one, prepared, rows_of
from providers import Completion
from routing.access import ModelInfo

from . import statements
from .models import TERMINAL_STATUSES, Run, RunStatus


def stale_before(now=None) -> dt.datetime:
    """Runs executing with no heartbeat since this instant have lost their worker."""
    return (now or timezone.now()) - dt.timedelta(seconds=settings.HEARTBEAT_STALE_SECS)


def stale_heartbeat(now=None) -> Q:
    return Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale_before(now))


def is_stale(run: Run) -> bool:
    return run.heartbeat_at is None or run.heartbeat_at < stale_before()


def _claim_queued(run_id, timeout_secs: int, token, now) -> Run | None:
    """queued -> executing in one statement that returns the run (PostgreSQL), for a message that
    says the run's timeout; None if it matched nothing (not queued, or the hint is wrong)."""
    if connection.vendor != "postgresql":
        return None
    params = {
        **prepared(Run, id=run_id, claim=token, timeout_secs=timeout_secs),
        "now": now,
        "deadline_at": now + dt.timedelta(seconds=timeout_secs),
    }
    row = fetch_one(statements.claim_queued(), params)
    return None if row is None else rows_of(Run).load(row)


def run_claim(run_id, timeout_secs: int | None = None) -> tuple[Run, uuid.UUID, bool] | None:
    """queued -> executing, or take over an executing run whose worker died before the provider
    answered. The run (its deadline still counts from the first start), this claim's token, and
    whether the claim already counted the provider call that follows it; or None if someone else
    holds it or it has ended.

    The row is read first, then claimed by a conditional UPDATE that re-checks what the read saw:
    a concurrent claim, cancel or end makes it match nothing. The read is what lets the UPDATE also
    fix the deadline and count the first provider call, so a claim costs two queries, not four.
    With the run's `timeout_secs` (admission's message says it), a queued run is claimed in one."""
    if timeout_secs is not None:
        token, now = uuid.uuid4(), timezone.now()
        run = _claim_queued(run_id, timeout_secs, token, now)
        if run is not None:
            return run, token, True
    try:
        run = Run.objects.get(pk=run_id)
    except Run.DoesNotExist:
        return None
    now = timezone.now()
    fresh = run.status == RunStatus.QUEUED
    if fresh:
        claimable = Q(status=RunStatus.QUEUED)
    elif run.status == RunStatus.EXECUTING and run.input_tokens is None:
        claimable = Q(status=RunStatus.EXECUTING, input_tokens__isnull=True) & stale_heartbeat(now)
    else:
        return None
    token = uuid.uuid4()
    started_at = run.started_at or now
    deadline_at = run.deadline_at or started_at + dt.timedelta(
        seconds=run.timeout_secs
    )  # the first claim fixes it
    changes = {
        "status": RunStatus.EXECUTING,
        "started_at": Coalesce("started_at", Value(now)),
        "deadline_at": Coalesce("deadline_at", Value(deadline_at)),
        "heartbeat_at": now,
        "claim": token,
        "claims": F("claims") + 1,
    }
    if fresh:  # a fresh claim's deadline is ahead, so its first provider call always happens
        changes["provider_calls"] = F("provider_calls") + 1
    if not Run.objects.filter(claimable, pk=run_id).update(**changes):
        return None
    run.status, run.started_at, run.deadline_at, run.heartbeat_at, run.claim = (
        RunStatus.EXECUTING,
        started_at,
        deadline_at,
        now,
        token,
    )
    run.claims += 1
    run.provider_calls += fresh
    return run, token, fresh


def claim_state(status: str | None, claim, token) -> str:
    """What a run's status and claim mean to the worker holding `token`: "ok" (still its own),
    "canceled", or "lost" (taken over or ended by someone else). "canceled" only to the claim that
    holds the run: a stale worker must not settle it."""
    if claim == token and status == RunStatus.EXECUTING:
        return "ok"
    return "canceled" if claim == token and status == RunStatus.CANCELED else "lost"


def run_holder_state(run_id, token) -> str:
    """claim_state() of one run, read now."""
    status, claim = Run.objects.filter(pk=run_id).values_list("status", "claim").first() or (None, None)
    return claim_state(status, claim, token)


def runs_claims(run_ids) -> dict:
    """{run id: (status, claim)} of these runs, in one read (runs.inflight's round)."""
    rows = Run.objects.filter(pk__in=run_ids).values_list("id", "status", "claim")
    return {run_id: (status, claim) for run_id, status, claim in rows}


def runs_heartbeat(run_ids) -> None:
    """Say the worker holding these runs is alive, in one UPDATE (runs.inflight's round)."""
    Run.objects.filter(pk__in=run_ids, status=RunStatus.EXECUTING).update(heartbeat_at=timezone.now())


def run_deadline(run: Run) -> dt.datetime:
    if run.deadline_at:
        return run.deadline_at
    assert run.started_at is not None, "only a run that has started is asked for its deadline"
    return run.started_at + dt.timedelta(seconds=run.timeout_secs)


def timeout_error(run: Run) -> dict:
    return {
        "code": "timeout",
        "message": f"The run did not finish within its timeout of {run.timeout_secs} seconds.",
    }


def run_count_call(run_id, by: int = 1) -> None:
    Run.objects.filter(pk=run_id).update(provider_calls=F("provider_calls") + by)


def run_switch_model(run_id, token, model_id: str, entry: ModelInfo, multiplier) -> bool:
    """Continue an executing run on a fallback model, billed at `multiplier` from now on."""
    return bool(
        Run.objects.filter(pk=run_id, status=RunStatus.EXECUTING, claim=token).update(
            model=model_id, catalog_model=entry.id, provider=entry.provider, multiplier=multiplier
        )
    )


def run_record_completion(run_id, token, completion: Completion) -> None:
    """Store the provider's answer before anything else, so no redelivery calls the provider again.

    A run canceled meanwhile keeps its status and gets no output, but its usage is recorded: it is
    billed for what the provider reported."""
    usage = {"input_tokens": completion.input_tokens, "output_tokens": completion.output_tokens}
    unrecorded = Run.objects.filter(pk=run_id, claim=token, input_tokens__isnull=True)
    if not unrecorded.filter(status=RunStatus.EXECUTING).update(output={"text": completion.text}, **usage):
        unrecorded.filter(status=RunStatus.CANCELED, settled_at__isnull=True).update(**usage)


def run_complete(run: Run, token, completion: Completion) -> Counters | None:
    """The provider answered: store its answer, end the run completed and settle it. `run` is this
    claim's view of the row (its model and multiplier as it last switched them), re-checked by the
    UPDATE. One statement on PostgreSQL (statements.COMPLETE); a transaction elsewhere.

    The user's counters for the token alerts, which the caller records next (outside any
    transaction, so the one statement stays one round trip); or None, having written nothing, if
    the run is no longer this claim's to complete (canceled meanwhile, or taken over): the caller
    then records the usage and settles the general way."""
    usage = {
        "input_tokens": completion.input_tokens,
        "output_tokens": completion.output_tokens,
        "billed_tokens": billed_tokens(completion.input_tokens, completion.output_tokens, run.multiplier),
    }
    values = {"output": {"text": completion.text}, **usage}
    where = {"id": run.pk, "claim": token, "model": run.model, "multiplier": run.multiplier}
    now = timezone.now()
    counters = None
    if connection.vendor == "postgresql":
        counters = fetch_one(statements.COMPLETE, {**prepared(Run, **values, **where), "now": now})
    else:
        with transaction.atomic():
            ours = Run.objects.filter(status=RunStatus.EXECUTING, input_tokens__isnull=True, **where)
            if ours.update(status=RunStatus.COMPLETED, finished_at=now, settled_at=now, **values):
                counters = usage_record(_settled(run, **usage))
    if counters is not None:
        for name, value in {
            **values,
            "status": RunStatus.COMPLETED,
            "finished_at": now,
            "settled_at": now,
        }.items():
            setattr(run, name, value)
        over_reservation_note(
            run_id=run.pk, billed_tokens=run.billed_tokens, reserved_tokens=run.reserved_tokens
        )
        metrics.run_settled(run, RunStatus.COMPLETED)
    return counters


def run_finish(run_id, status: str, error: dict | None = None, token=None, usage=None) -> None:
    """executing -> a terminal status, and settlement, in one transaction. With a token, only while
    this claim holds the run. A run that is already terminal (canceled, or finished by another
    delivery or the sweeper) keeps its status and is only settled, if it is not already.
    `usage` (input, output tokens): what a call that did not complete had reported, billed with it,
    also when a cancel ended the run just before (run_record_usage)."""
    executing = Run.objects.filter(pk=run_id, status=RunStatus.EXECUTING)
    if token is not None:
        executing = executing.filter(claim=token)
    changes = {"status": status, "error": error, "finished_at": timezone.now()}
    if usage is not None:
        executing = executing.filter(input_tokens__isnull=True)
        changes.update(input_tokens=usage[0], output_tokens=usage[1])
    with transaction.atomic():
        if not executing.update(**changes) and usage is not None and token is not None:
            # Canceled just before: billed for what the provider reported all the same.
            run_record_usage(run_id, token, *usage)
        run_settle(run_id)


def run_record_usage(run_id, token, input_tokens: int, output_tokens: int) -> bool:
    """A run canceled while its provider call was in flight: record what the provider reported, so
    its settlement (run_settle) bills it. Only by the claim that held it, only once, only unsettled."""
    return bool(
        Run.objects.filter(
            pk=run_id,
            claim=token,
            status=RunStatus.CANCELED,
            input_tokens__isnull=True,
            settled_at__isnull=True,
        ).update(input_tokens=input_tokens, output_tokens=output_tokens)
    )


def run_settle(run_id) -> bool:
    """Replace a terminal run's reservation by what it actually costs, exactly once: bill the raw
    usage stored on the run (if the provider reported any) at the run's multiplier, mark it settled
    and record the bill (billing.settlement), its token alerts with it. False when the run was
    already settled (a redelivery) or is not terminal, having changed nothing. (A worker whose run
    completes settles it in the statement that ends it, run_complete.)"""
    with transaction.atomic(savepoint=False):  # inside run_finish's transaction a savepoint buys nothing
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.settled_at is not None or run.status not in TERMINAL_STATUSES:
            return False
        if run.input_tokens is not None and run.output_tokens is not None:
            run.billed_tokens = billed_tokens(run.input_tokens, run.output_tokens, run.multiplier)
        else:
            run.billed_tokens = None
        run.settled_at = timezone.now()
        Run.objects.filter(pk=run_id).update(settled_at=run.settled_at, billed_tokens=run.billed_tokens)
        counters = usage_record(_settled(run))
        run_token_alerts_record(run, counters)
        metrics.run_settled(run, run.status)
    over_reservation_note(run_id=run.pk, billed_tokens=run.billed_tokens, reserved_tokens=run.reserved_tokens)
    return True


def _settled(run: Run, **changes) -> SettledRun:
    """The figures of `run` that billing records, with `changes` made by the settling UPDATE."""
    fields = {
        "run_id": run.pk,
        "user_id": run.user_id,
        "agent_id": run.agent_id,
        "key_id": run.key_id,
        "created_at": run.created_at,
        "period": run.period,
        "model": run.model,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "multiplier": run.multiplier,
        "billed_tokens": run.billed_tokens,
        "reserved_tokens": run.reserved_tokens,
    }
    return SettledRun(**{**fields, **changes})


def run_token_alerts_record(run: Run, counters: Counters) -> None:
    token_alerts_record(
        user_id=run.user_id, period=run.period, billed_tokens=run.billed_tokens, counters=counters
    )


def run_token_alerts_catch_up(run: Run) -> None:
    """Record the token alerts the user's counters have reached, for a completed run whose worker
    may have died between its settlement's commit and its alerts (runs.execution records them in a
    step of their own; the redelivery of the run's message comes here)."""
    counters = counters_of(run.user_id, run.period)
    if counters is not None:
        run_token_alerts_record(run, counters)


def run_forget_idempotency_key(run_id, key: str) -> None:
    """An Idempotency-Key past its 24 hours (runs.idempotency) no longer names this run."""
    Run.objects.filter(pk=run_id, idempotency_key=key).update(idempotency_key=None)


class RunFinished(Exception):
    pass


def run_cancel(*, run: Run) -> Run:
    """Cancel a queued or executing run; RunFinished if it already ended.

    A queued run is settled at once (its reservation released) and its claim will fail, so it never
    starts. An executing run is settled by its worker, which notices the cancel while waiting on the
    provider, bills whatever the provider had reported, and never changes the status again."""
    now = timezone.now()
    canceled = {
        "status": RunStatus.CANCELED,
        "finished_at": now,
        "error": {"code": "canceled", "message": "The run was canceled."},
    }
    if Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(**canceled):
        run_settle(run.pk)
    elif not Run.objects.filter(pk=run.pk, status=RunStatus.EXECUTING).update(**canceled):
        raise RunFinished()
    run.refresh_from_db()
    return run
