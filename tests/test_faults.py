"""Faults injected for real: worker processes killed with SIGKILL, the same run delivered to two
workers at once, PostgreSQL stopped between the provider's answer and settlement. Each test runs its
own Redis (and, for the database fault, its own PostgreSQL) so the machine's services never stop.

Bounds stated here, with MASCHINA_HEARTBEAT_STALE_SECS=3 and a sweep every second: a run whose
worker died is taken over and finished within stale + sweep + its own work, under 20 s."""

import tempfile
import time

import pytest

from billing.models import LedgerEntry
from billing.selectors import plan_for
from runs.admission import run_create
from runs.audit import audit
from runs.models import Run, RunStatus
from runs.tasks import execute_run

from .concurrency import race
from .emulators import Reply
from .processes import (
    Api,
    PostgresServer,
    RedisServer,
    children,
    manage,
    publish,
    stack_env,
    start_beat,
    start_gunicorn,
    start_worker,
    wait_for,
    wait_http,
    wait_terminal,
    wait_worker_ready,
)

pytestmark = pytest.mark.slow


def new_run(make_user, make_agent, model="claude-haiku-4-5", tier="m10", timeout_secs=60):
    user = make_user(tier)
    return run_create(
        user=user,
        plan=plan_for(user),
        agent=make_agent(user),
        input={"message": "fault"},
        model=model,
        timeout_secs=timeout_secs,
        max_tokens=64,
    )


def assert_billed_once(run, billed):
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.billed_tokens == billed
    assert LedgerEntry.objects.filter(run=run).count() == 1
    summary, problems = audit()
    assert problems == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("victim", ["pool process", "main process"])
def test_worker_killed_inside_the_provider_call(cluster, make_user, make_agent, anthropic_emulator, victim):
    env, log_dir = cluster["env"], cluster["log_dir"]
    # A pool process exists only in the prefork pool, which stays supported (MASCHINA_WORKER_POOL).
    pool = "prefork" if victim == "pool process" else None
    worker = start_worker(env, log_dir, name="doomed", concurrency=1, pool=pool)
    beat = start_beat(env, log_dir)
    cluster["processes"] += [worker, beat]
    wait_worker_ready(worker)
    anthropic_emulator.queue("claude-haiku-4-5", Reply(delay=30))  # the first call hangs until we kill
    run = new_run(make_user, make_agent)
    publish(cluster, run)
    wait_for(lambda: anthropic_emulator.calls, 15, "the provider call")

    import os
    import signal

    killed_at = time.monotonic()
    if victim == "pool process":
        (pool,) = children(worker.proc.pid)
        os.kill(pool, signal.SIGKILL)  # the main process restarts the pool and requeues the message
    else:
        os.killpg(worker.proc.pid, signal.SIGKILL)  # the whole worker: its message stays unacked in Redis
        worker.proc.wait(5)
        fresh = start_worker(env, log_dir, name="fresh", concurrency=1)
        cluster["processes"].append(fresh)
        wait_worker_ready(fresh)

    done = wait_for(
        lambda: Run.objects.get(pk=run.pk).status == RunStatus.COMPLETED, 30, "the run to complete"
    )
    recovery = done - killed_at
    print(f"\n{victim} killed: run completed {recovery:.1f}s later")
    assert recovery < 20
    assert_billed_once(run, 62)
    run.refresh_from_db()
    assert (
        run.claims == 2 and run.provider_calls == 2
    )  # one abandoned with the dead worker, one that answered
    assert len(anthropic_emulator.calls) == 2


@pytest.mark.django_db(transaction=True)
def test_the_same_run_delivered_to_two_workers_at_once(cluster, make_user, make_agent, anthropic_emulator):
    env, log_dir = cluster["env"], cluster["log_dir"]
    workers = [start_worker(env, log_dir, name=f"twin{i}", concurrency=1) for i in range(2)]
    cluster["processes"] += workers
    for worker in workers:
        wait_worker_ready(worker)
    anthropic_emulator.delay = 0.5
    runs = [new_run(make_user, make_agent) for _ in range(5)]
    for run in runs:
        publish(cluster, run)
        publish(cluster, run)  # a duplicate, as Redis redelivery can make one
    for run in runs:
        wait_for(lambda run=run: Run.objects.get(pk=run.pk).settled_at is not None, 30, "settlement")
        assert_billed_once(run, 62)
        run.refresh_from_db()
        assert (run.claims, run.provider_calls) == (1, 1)
    time.sleep(1)  # let the losing deliveries finish
    assert len(anthropic_emulator.calls) == 5
    logs = "".join(w.tail(10_000) for w in workers)
    assert "IntegrityError" not in logs and "Traceback" not in logs
    assert logs.count("succeeded") == 10  # every delivery, winner or loser, ended cleanly


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_claiming_at_the_same_instant(make_user, make_agent, providers):
    run = new_run(make_user, make_agent)
    outcomes = race(2, lambda: execute_run(str(run.pk)), timeout=30)
    assert outcomes == [None, None]  # neither delivery raised
    assert_billed_once(run, 62)
    assert len(providers[0].calls) == 1


@pytest.mark.django_db(transaction=True)
def test_database_down_between_the_answer_and_settlement(anthropic_emulator):
    anthropic_emulator.reset()
    pg = PostgresServer()
    broker = RedisServer()
    env = stack_env(broker_url=broker.url, anthropic=anthropic_emulator, database_url=pg.url)
    log_dir = tempfile.mkdtemp(prefix="maschina-dbdown-logs-")
    processes = []
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "set_tier", "dora", "m1")
        key = manage(env, "create_api_key", "dora").strip().splitlines()[-1]
        web, url = start_gunicorn(env, log_dir, workers=1)
        worker = start_worker(env, log_dir, concurrency=1)
        processes += [web, worker]
        wait_http(url + "/healthz", [web, worker])
        wait_worker_ready(worker)
        client = Api(url, key)
        agent_id = client.post("/api/v1/agents", {"name": "a"}).json()["id"]
        anthropic_emulator.queue("claude-haiku-4-5", Reply(delay=2))
        run_id = client.post(f"/api/v1/agents/{agent_id}/run", {"input": {"message": "hi"}}).json()["id"]
        wait_for(lambda: anthropic_emulator.calls, 15, "the provider call")

        pg.stop()  # the provider answers while the database is down
        time.sleep(4)
        assert len(anthropic_emulator.calls) == 1
        pg.start()

        run = wait_terminal(client, run_id, timeout=30)
        assert run["status"] == "completed", (run, worker.tail())
        assert run["usage"]["billed_tokens"] == 62
        assert len(anthropic_emulator.calls) == 1  # the answer was kept, not asked for again
        assert pg.query(f"select count(*) from billing_ledgerentry where run_id = '{run_id}'") == "1"
        assert "database unavailable" in worker.tail(200)
        audit_out = manage(env, "billing_audit")
        assert "billing audit OK" in audit_out
    finally:
        for process in processes:
            process.stop()
        broker.stop()
        pg.destroy()
