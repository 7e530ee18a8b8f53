"""Schemathesis against the running app: generated requests to every operation of /api/schema/,
valid and invalid, over HTTP to the recommended deployment (uvicorn and a `celery worker`, on
PostgreSQL and a Redis of our own, the providers emulated), with every check schemathesis has: no
server error, every response as documented, valid data accepted and invalid data refused,
authentication enforced."""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from accounts.services import api_key_create
from billing.plans import UNLIMITED, plan_set

from .emulators import Reply
from .processes import (
    BIN,
    ROOT,
    Api,
    RedisServer,
    stack_env,
    start_uvicorn,
    start_worker,
    wait_http,
    wait_worker_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHECKS = "all"


def test_generated_requests_find_no_server_error_and_no_schema_violation(
    catalog, anthropic_emulator, ollama_emulator
):
    user = get_user_model().objects.create(username="schemathesis")
    # Rate limits lifted: generated runs would otherwise mostly test the 429 (tests/test_rate_limits.py does).
    plan_set(user=user, tier_slug="m10", requests_per_minute=UNLIMITED, max_concurrent_runs=UNLIMITED)
    _, key = api_key_create(user=user)
    # A worker ends the generated runs, so a `?wait` answers when its run does and an event stream
    # closes, instead of each holding its connection to the limit.
    broker = RedisServer()
    env = stack_env(broker_url=broker.url, anthropic=anthropic_emulator, ollama=ollama_emulator)
    log_dir = tempfile.mkdtemp(prefix="maschina-schemathesis-")
    web, url = start_uvicorn(env, log_dir)
    worker = start_worker(env, log_dir, concurrency=8)
    report = Path(log_dir) / "report"
    try:
        wait_http(url + "/healthz", [web, worker])
        wait_worker_ready(worker)
        # The run that POST /runs/{id}/cancel is given (tests/schemathesis.toml): executing for a
        # while, so the first cancels find it running and the later ones find it ended.
        anthropic_emulator.reset()
        anthropic_emulator.queue("claude-haiku-4-5", Reply(delay=20))
        api = Api(url, key)
        agent = api.post("/api/v1/agents", {"name": "schemathesis"}).json()["id"]
        started = api.post(
            f"/api/v1/agents/{agent}/run", {"input": {"message": "hi"}, "model": "claude-haiku-4-5"}
        )
        run_id = started.json()["id"]
        result = subprocess.run(
            [
                str(BIN / "python"),
                "tests/schemathesis_cli.py",
                "--config-file",
                "tests/schemathesis.toml",
                "run",
                f"{url}/api/schema/",
                "--url",
                url,
                "--checks",
                CHECKS,
                "--header",
                f"Authorization: Bearer {key}",
                "--max-examples",
                "50",
                "--seed",
                "31",
                # Revoking keys would revoke the run's own key, found by GET /keys, and leave every later
                # operation a 401; tests/test_keys.py covers DELETE /keys/{id}.
                "--exclude-operation-id",
                "keys_destroy",
                "--workers",
                "2",
                # Every check, on every operation, in every phase; tests/schemathesis.toml names the
                # statuses a schema cannot predict (rules across fields, the clock, what jsonb stores).
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--request-timeout",
                "65",
                "--generation-database",
                "none",
                "--no-color",
                "--report",
                "junit",
                "--report-dir",
                str(report),
            ],
            cwd=ROOT,
            env={**os.environ, "SCHEMATHESIS_CANCEL_RUN_ID": run_id},
            capture_output=True,
            text=True,
            timeout=600,
        )
        print(result.stdout[-3000:])
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
        assert "No issues found" in result.stdout
    finally:
        web.stop()
        worker.stop()
        broker.stop()
