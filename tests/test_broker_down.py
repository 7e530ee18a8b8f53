"""CONTRACT section 5: with the broker down at admission the API still answers 202, and the run is
dispatched by the sweeper once the broker is back. Uses its own redis-server on another port."""

import datetime as dt
import tempfile
import time

import pytest

from runs.models import Run

from .processes import (
    Api,
    RedisServer,
    manage,
    stack_env,
    start_gunicorn,
    start_worker,
    wait_for,
    wait_http,
    wait_terminal,
    wait_worker_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_run_admitted_while_broker_is_down_is_dispatched_when_it_is_back(catalog, anthropic_emulator):
    anthropic_emulator.reset()
    broker = RedisServer()
    env = stack_env(broker_url=broker.url, anthropic=anthropic_emulator, MASCHINA_SWEEP_INTERVAL_SECS="1")
    log_dir = tempfile.mkdtemp(prefix="maschina-broker-logs-")
    manage(env, "set_tier", "bob", "m1")
    key = manage(env, "create_api_key", "bob").strip().splitlines()[-1]
    web, url = start_gunicorn(env, log_dir, workers=1)
    worker = None
    try:
        wait_http(url + "/healthz", [web])
        client = Api(url, key)
        agent_id = client.post("/api/v1/agents", {"name": "a"}).json()["id"]

        broker.stop()
        health = client.get("/healthz")
        assert (health.status_code, health.json()) == (503, {"database": "ok", "broker": "down"})
        started = time.monotonic()
        response = client.post(f"/api/v1/agents/{agent_id}/run", {"input": {"message": "hi"}})
        admission_secs = time.monotonic() - started
        assert response.status_code == 202, response.text
        run = Run.objects.get(pk=response.json()["id"])
        assert (run.status, run.dispatched_at) == ("queued", None)

        broker.start()
        back = time.monotonic()
        worker = start_worker(env, log_dir, beat=True)
        wait_worker_ready(worker)
        done = wait_terminal(client, run.pk, timeout=30)
        drain_secs = time.monotonic() - back
        assert done["status"] == "completed", (done, worker.tail())
        assert done["usage"]["billed_tokens"] == 62
        assert len(anthropic_emulator.calls) == 1
        run.refresh_from_db()
        assert run.dispatched_at is not None and run.dispatched_at - run.created_at > dt.timedelta(seconds=0)
        print(
            f"admission with broker down: {admission_secs:.2f}s; broker back -> completed: {drain_secs:.2f}s"
        )
        assert admission_secs < 10
    finally:
        web.stop()
        if worker:
            worker.stop()
        broker.stop()


def test_broker_outage_admissions_do_not_wait_on_the_broker(catalog, anthropic_emulator):
    """After the first failed publish the broker's circuit is open: admissions answer 202 at normal
    speed and leave dispatch to the sweeper, another user's requests are not held up, /healthz
    answers within 0.5 s; once a probe finds the broker back, admissions publish again."""
    anthropic_emulator.reset()
    broker = RedisServer()
    env = stack_env(
        broker_url=broker.url,
        anthropic=anthropic_emulator,
        MASCHINA_SWEEP_INTERVAL_SECS="1",
        MASCHINA_BROKER_PROBE_SECS="0.5",
    )
    log_dir = tempfile.mkdtemp(prefix="maschina-broker-logs-")
    # Eleven runs at once: above m1's seeded concurrency limit, which this test is not about.
    manage(
        env,
        "set_tier",
        "bob",
        "m1",
        "--max-concurrent-runs",
        "unlimited",
        "--requests-per-minute",
        "unlimited",
    )
    manage(env, "set_tier", "eve", "m1")
    bob = manage(env, "create_api_key", "bob").strip().splitlines()[-1]
    eve = manage(env, "create_api_key", "eve").strip().splitlines()[-1]
    web, url = start_gunicorn(env, log_dir, workers=1)
    worker = None
    try:
        wait_http(url + "/healthz", [web])
        client, other = Api(url, bob), Api(url, eve)
        agent_id = client.post("/api/v1/agents", {"name": "a"}).json()["id"]
        broker.stop()

        first = client.post(f"/api/v1/agents/{agent_id}/run", {"input": {"message": "first"}})
        assert first.status_code == 202, first.text
        timings, run_ids = [], [first.json()["id"]]
        for i in range(10):
            started = time.monotonic()
            response = client.post(f"/api/v1/agents/{agent_id}/run", {"input": {"message": f"m{i}"}})
            timings.append(time.monotonic() - started)
            assert response.status_code == 202, response.text
            run_ids.append(response.json()["id"])
            started = time.monotonic()
            assert other.get("/api/v1/usage").status_code == 200
            timings.append(time.monotonic() - started)
            started = time.monotonic()
            health = other.get("/healthz")
            health_secs = time.monotonic() - started
            assert (health.status_code, health.json()) == (503, {"database": "ok", "broker": "down"})
            assert health_secs < 0.5, health_secs
        assert max(timings) < 0.5, timings
        assert set(Run.objects.filter(pk__in=run_ids).values_list("status", "dispatched_at")) == {
            ("queued", None)
        }

        broker.start()
        worker = start_worker(env, log_dir, beat=True)
        wait_worker_ready(worker)
        for run_id in run_ids:
            assert wait_terminal(client, run_id, timeout=30)["status"] == "completed", worker.tail()
        assert len(anthropic_emulator.calls) == len(run_ids)

        # The web process's probe has found the broker: admissions publish at once again.
        wait_for(lambda: other.get("/healthz").status_code == 200, 10, "the broker reported back up")
        again = client.post(f"/api/v1/agents/{agent_id}/run", {"input": {"message": "again"}}).json()
        assert Run.objects.get(pk=again["id"]).dispatches == 1
        assert wait_terminal(client, again["id"], timeout=30)["status"] == "completed"
        assert manage(env, "billing_audit").strip().endswith("billing audit OK")
    finally:
        web.stop()
        if worker:
            worker.stop()
        broker.stop()
