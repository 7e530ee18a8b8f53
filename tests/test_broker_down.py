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
