"""runs.inflight: one round heartbeats every run the process holds and finds the canceled and the
taken-over ones in two statements, however many runs it holds."""

import datetime as dt
import gc
import threading
import time
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs import inflight
from runs.models import Run, RunStatus
from runs.services import run_cancel

from .test_execution import start_run  # noqa: F401  (a fixture)


@pytest.fixture
def held_runs(start_run):  # noqa: F811
    runs, tokens, woken = [], [], []
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    for _ in range(30):
        run = start_run(model="claude-haiku-4-5")
        token = uuid.uuid4()
        Run.objects.filter(pk=run.pk).update(status=RunStatus.EXECUTING, claim=token, heartbeat_at=long_ago)
        inflight.hold(run.pk, token, wake=lambda run_id=run.pk: woken.append(run_id))
        runs.append(run)
        tokens.append(token)
    yield runs, tokens, woken
    for run in runs:
        inflight.release(run.pk)


@pytest.mark.django_db
def test_one_round_is_two_statements_for_all_held_runs(held_runs):
    runs, _, woken = held_runs
    run_cancel(run=Run.objects.get(pk=runs[0].pk))
    Run.objects.filter(pk=runs[1].pk).update(claim=uuid.uuid4())  # taken over by another worker
    with CaptureQueriesContext(connection) as queries:
        inflight.watch_once()
    assert len(queries) == 2
    states = {run.pk: inflight._held[run.pk].state for run in runs}
    assert states[runs[0].pk] == "canceled"
    assert woken == [runs[0].pk, runs[1].pk]  # each woken once, to stop
    assert states[runs[1].pk] == "lost"
    assert {states[run.pk] for run in runs[2:]} == {"ok"}
    fresh = timezone.now() - dt.timedelta(seconds=5)
    heartbeats = dict(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("id", "heartbeat_at"))
    assert all(heartbeats[run.pk] > fresh for run in runs[2:])  # the ones still ours
    assert heartbeats[runs[1].pk] < fresh  # not another worker's


@pytest.mark.django_db
def test_a_stale_claim_is_never_told_canceled(held_runs):
    runs, _, _ = held_runs
    Run.objects.filter(pk=runs[0].pk).update(status=RunStatus.CANCELED, claim=uuid.uuid4())
    inflight.watch_once()
    assert inflight._held[runs[0].pk].state == "lost"  # only the holding claim settles a cancel


@pytest.mark.django_db
def test_rounds_heartbeat_every_sixth_of_the_staleness_and_look_for_cancels_every_time(
    held_runs, settings, monkeypatch
):
    runs, _, _ = held_runs
    settings.CANCEL_POLL_SECS, settings.HEARTBEAT_STALE_SECS = 0, 600  # heartbeats every 100 s
    monkeypatch.setattr(inflight, "_last_round", 0.0)
    monkeypatch.setattr(inflight, "_last_heartbeat", 0.0)
    counts = []
    for _ in range(3):
        with CaptureQueriesContext(connection) as queries:
            inflight.watch_if_due()
        counts.append(len(queries))
    assert counts == [2, 1, 1]  # the first round heartbeats, the next two only read
    run_cancel(run=Run.objects.get(pk=runs[0].pk))
    inflight.watch_if_due()
    assert inflight._held[runs[0].pk].state == "canceled"


@pytest.mark.django_db(transaction=True)
def test_a_workers_loop_prompts_the_rounds_on_a_thread_of_their_own(start_run, settings):  # noqa: F811
    """Runs waiting on the loop hold no thread to take the rounds: the loop prompts a thread of the
    rounds' own to, every CANCEL_POLL_SECS, and a cancel found there wakes its run."""
    from runs import execution

    settings.CANCEL_POLL_SECS, settings.HEARTBEAT_STALE_SECS = 0.1, 0.6
    run = start_run(model="claude-haiku-4-5")
    token, woken = uuid.uuid4(), threading.Event()
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.EXECUTING, claim=token, heartbeat_at=long_ago)
    inflight.hold(run.pk, token, wake=woken.set)
    try:
        execution._keep_watching()
        deadline = time.monotonic() + 5
        while Run.objects.get(pk=run.pk).heartbeat_at == long_ago and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Run.objects.get(pk=run.pk).heartbeat_at > long_ago
        run_cancel(run=Run.objects.get(pk=run.pk))
        assert woken.wait(5) and inflight._held[run.pk].state == "canceled"
    finally:
        inflight.release(run.pk)
        execution._watching = None  # the loop stops prompting at its next tick
        time.sleep(0.3)
        pools = [pool for _, pool in execution._pools.values()]
        execution._pools.clear()
        for pool in pools:
            pool.shutdown(wait=True)  # their threads end, and their connections with them
        gc.collect()
