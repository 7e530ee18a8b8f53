"""One user's burst must not hold up another user's runs: a run's message priority comes from its
user's runs in flight at admission (runs.dispatch.fair_priority), and kombu's Redis transport serves
the lower priority first. End to end: gunicorn, a real worker with two slots (so a backlog stays in
Redis) and the emulator answering after a delay."""

import datetime as dt
import tempfile

import pytest

from accounts.services import api_key_create
from billing.history import UsageLine
from billing.models import LedgerEntry
from billing.plans import Limits
from billing.quota import quota_reserve
from billing.selectors import plan_for
from runs import admission, sweeper
from runs.dispatch import fair_priority
from runs.models import Run, RunStatus

from .processes import Api, start_gunicorn, start_worker, wait_for, wait_http, wait_worker_ready

MODEL = "claude-haiku-4-5"


@pytest.mark.parametrize(
    "fair_share, priorities",
    [
        (8, {1: 0, 8: 0, 9: 3, 64: 3, 65: 6, 512: 6, 513: 9, 100_000: 9}),
        (2, {1: 0, 2: 0, 3: 3, 16: 3, 17: 6, 128: 6, 129: 9}),
        (1, {1: 0, 2: 3, 8: 3, 9: 6, 64: 6, 65: 9}),
    ],
)
def test_priority_bands_grow_eightfold_from_the_fair_share(settings, fair_share, priorities):
    settings.FAIR_SHARE = fair_share
    assert {n: fair_priority(n) for n in priorities} == priorities


@pytest.mark.django_db
def test_quota_reserve_counts_the_runs_in_flight_with_this_one(make_user):
    user = make_user("enterprise")
    limits = Limits(tokens=None, runs=None, exempt=False)
    line = UsageLine.of(
        created_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), model="m", agent_id=None, key_id=None
    )
    taken = [
        quota_reserve(user_id=user.pk, period=dt.date(2026, 11, 1), tokens=1, limits=limits, line=line)
        for _ in range(3)
    ]
    assert [admitted.in_flight for admitted in taken] == [1, 2, 3]


def admit(user, agent, n):
    plan = plan_for(user)
    return [
        admission.run_admit(
            user=user, plan=plan, agent=agent, input={"message": "hi"}, model=MODEL, timeout_secs=60,
            max_tokens=16,
        )[0]
        for _ in range(n)
    ]  # fmt: skip


@pytest.mark.django_db
def test_admission_publishes_at_the_users_priority(
    make_user, make_agent, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """The period's first run goes quota_reserve's way (its counter row is missing), the others the
    one PostgreSQL statement: both count the runs in flight the same way."""
    settings.FAIR_SHARE = 3
    published = []
    monkeypatch.setattr(
        admission, "publish_admitted", lambda run_id, timeout, priority: published.append(priority)
    )
    burst, other = make_user("enterprise"), make_user("enterprise")
    with django_capture_on_commit_callbacks(execute=True):
        admit(burst, make_agent(burst), 26)
        admit(other, make_agent(other), 1)
    assert published == [0] * 3 + [3] * 21 + [6] * 2 + [0]


@pytest.mark.django_db
def test_the_sweeper_publishes_again_at_the_users_priority_now(
    make_user, make_agent, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.FAIR_SHARE = 2
    monkeypatch.setattr(admission, "publish_admitted", lambda *args: True)
    burst, other = make_user("enterprise"), make_user("enterprise")
    with django_capture_on_commit_callbacks(execute=True):
        runs = admit(burst, make_agent(burst), 5) + admit(other, make_agent(other), 1)
    Run.objects.update(redispatch_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))  # their messages look lost
    published = {}
    monkeypatch.setattr(
        sweeper,
        "dispatch_run",
        lambda run_id, timeout, dispatches, priority: published.setdefault(run_id, priority) is not None,
    )
    assert sweeper.sweep()["redispatched"] == 6
    assert published == {run.pk: 3 for run in runs[:5]} | {runs[5].pk: 0}


def burst_then_one(cluster, make_user, make_agent, anthropic_emulator, fair_share, burst=60):
    """User A admits `burst` runs over HTTP, then user B one; all drain on a two-slot worker."""
    log_dir = tempfile.mkdtemp(prefix="maschina-fairness-logs-")
    web, url = start_gunicorn({**cluster["env"], "MASCHINA_FAIR_SHARE": str(fair_share)}, log_dir)
    worker = start_worker(cluster["env"], log_dir, concurrency=2)
    cluster["processes"] += [web, worker]
    wait_http(url + "/healthz", [web, worker])
    wait_worker_ready(worker)
    anthropic_emulator.delay = 0.5

    def client(user):
        agent = make_agent(user)
        return Api(url, api_key_create(user=user)[1]), f"/api/v1/agents/{agent.pk}/run"

    def post(api, path):
        response = api.post(path, {"input": {"message": "hi"}, "model": MODEL})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    (a, a_path), (b, b_path) = client(make_user("enterprise")), client(make_user("enterprise"))
    a_ids = [post(a, a_path) for _ in range(burst)]
    b_id = post(b, b_path)
    ids = [*a_ids, b_id]
    wait_for(
        lambda: Run.objects.filter(pk__in=ids, status=RunStatus.COMPLETED).count() == len(ids),
        burst * 0.5 + 60,
        "every run completed",
    )
    assert LedgerEntry.objects.filter(run__in=ids).count() == len(ids)
    runs = {str(run.pk): run for run in Run.objects.filter(pk__in=ids)}
    return sorted((runs[i] for i in a_ids), key=lambda run: run.created_at), runs[b_id]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_one_users_burst_does_not_hold_up_another_users_run(
    cluster, make_user, make_agent, anthropic_emulator
):
    a_runs, b_run = burst_then_one(cluster, make_user, make_agent, anthropic_emulator, fair_share=8)
    a_starts = sorted(run.started_at for run in a_runs)
    ahead = sum(start < b_run.started_at for start in a_starts)
    print(f"\nB started after {ahead} of A's {len(a_runs)} runs")
    assert b_run.finished_at < a_starts[-20], f"B's run waited behind {ahead} of A's runs"
    # Within A's own burst the order stays the admission order (give or take the two slots'
    # claims racing each other): later bands only ever hold later runs.
    start_rank = {run.pk: rank for rank, run in enumerate(sorted(a_runs, key=lambda run: run.started_at))}
    assert all(abs(start_rank[run.pk] - rank) <= 2 for rank, run in enumerate(a_runs)), [
        start_rank[run.pk] for run in a_runs
    ]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_without_priorities_the_other_users_run_waits_behind_the_burst(
    cluster, make_user, make_agent, anthropic_emulator
):
    """The control: a fair share larger than the burst puts every run at priority 0, one FIFO queue."""
    a_runs, b_run = burst_then_one(cluster, make_user, make_agent, anthropic_emulator, fair_share=10_000)
    a_starts = sorted(run.started_at for run in a_runs)
    ahead = sum(start < b_run.started_at for start in a_starts)
    print(f"\nB started after {ahead} of A's {len(a_runs)} runs")
    assert b_run.started_at > a_starts[-3], f"B's run waited behind only {ahead} of A's runs"
