"""runs.inflight: one round heartbeats every run the process holds and finds the canceled and the
taken-over ones in two statements, however many runs it holds."""

import datetime as dt
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
    runs, tokens = [], []
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    for _ in range(30):
        run = start_run(model="claude-haiku-4-5")
        token = uuid.uuid4()
        Run.objects.filter(pk=run.pk).update(status=RunStatus.EXECUTING, claim=token, heartbeat_at=long_ago)
        inflight.hold(run.pk, token)
        runs.append(run)
        tokens.append(token)
    yield runs, tokens
    for run in runs:
        inflight.release(run.pk)


@pytest.mark.django_db
def test_one_round_is_two_statements_for_all_held_runs(held_runs):
    runs, tokens = held_runs
    run_cancel(run=Run.objects.get(pk=runs[0].pk))
    Run.objects.filter(pk=runs[1].pk).update(claim=uuid.uuid4())  # taken over by another worker
    with CaptureQueriesContext(connection) as queries:
        inflight.watch_once()
    assert len(queries) == 2
    states = {run.pk: inflight._held[run.pk].state for run in runs}
    assert states[runs[0].pk] == "canceled" and inflight._held[runs[0].pk].changed.is_set()
    assert states[runs[1].pk] == "lost"
    assert {states[run.pk] for run in runs[2:]} == {"ok"}
    fresh = timezone.now() - dt.timedelta(seconds=5)
    heartbeats = dict(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("id", "heartbeat_at"))
    assert all(heartbeats[run.pk] > fresh for run in runs[2:])  # the ones still ours
    assert heartbeats[runs[1].pk] < fresh  # not another worker's


@pytest.mark.django_db
def test_a_stale_claim_is_never_told_canceled(held_runs):
    runs, _ = held_runs
    Run.objects.filter(pk=runs[0].pk).update(status=RunStatus.CANCELED, claim=uuid.uuid4())
    inflight.watch_once()
    assert inflight._held[runs[0].pk].state == "lost"  # only the holding claim settles a cancel


@pytest.mark.django_db
def test_rounds_heartbeat_every_sixth_of_the_staleness_and_look_for_cancels_every_time(
    held_runs, settings, monkeypatch
):
    runs, _ = held_runs
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


def test_one_waiting_run_wakes_for_the_rounds_and_hands_them_on_when_it_stops_waiting(settings, monkeypatch):
    """Only the watcher polls, until the next round is due; when it stops waiting (its answer came,
    or its run ended), another waiting run becomes the watcher and is woken to take the rounds, and
    none is left when no run waits."""
    settings.CANCEL_POLL_SECS = 0.5
    monkeypatch.setattr(inflight, "_last_round", time.monotonic() - 0.2)  # the next round in 0.3 s
    run_ids = [uuid.uuid4() for _ in range(3)]
    first, second, third = (inflight.hold(run_id, uuid.uuid4()) for run_id in run_ids)
    try:
        assert 0.25 < inflight.poll_step(first) <= 0.3
        assert inflight.poll_step(second) is None and inflight.poll_step(third) is None
        assert not (second.changed.is_set() or third.changed.is_set())
        inflight.stop_waiting(first)
        [successor] = [held for held in (second, third) if held.changed.is_set()]
        assert inflight.poll_step(successor) is not None
        assert inflight.poll_step(first) is None  # waiting again, behind the new watcher
        inflight.stop_waiting(second)
        inflight.stop_waiting(third)
        assert first.changed.is_set() and inflight.poll_step(first) is not None
        monkeypatch.setattr(inflight, "_last_round", time.monotonic() - 5)  # a round overdue
        assert inflight.poll_step(first) == 0.05  # soon, but not a spin while another takes it
        inflight.stop_waiting(first)
        assert inflight._watcher is None  # nobody waits: the next run to wait takes the rounds
    finally:
        for run_id in run_ids:
            inflight.release(run_id)
