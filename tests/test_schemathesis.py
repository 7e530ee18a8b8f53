"""Schemathesis against the running app: generated requests to every operation of /api/schema/,
valid and invalid, over HTTP to the recommended deployment (uvicorn) on PostgreSQL, with every
check schemathesis has: no server error, every response as documented, valid data accepted and
invalid data refused, authentication enforced."""

import subprocess
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from accounts.services import api_key_create
from billing.plans import UNLIMITED, plan_set

from .processes import BIN, ROOT, stack_env, start_uvicorn, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHECKS = "all"


def test_generated_requests_find_no_server_error_and_no_schema_violation(catalog):
    user = get_user_model().objects.create(username="schemathesis")
    # Rate limits lifted: generated runs would otherwise mostly test the 429 (tests/test_rate_limits.py does).
    plan_set(user=user, tier_slug="m10", requests_per_minute=UNLIMITED, max_concurrent_runs=UNLIMITED)
    _, key = api_key_create(user=user)
    env = stack_env(broker_url="memory://")
    log_dir = tempfile.mkdtemp(prefix="maschina-schemathesis-")
    web, url = start_uvicorn(env, log_dir)
    report = Path(log_dir) / "report"
    try:
        wait_http(url + "/healthz", [web])
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
                # Without a worker (the broker is in memory) a run never ends: its event stream stays
                # open (tests/test_streams.py covers it), and a `?wait` is held to its limit (60 s at most).
                "--exclude-operation-id",
                "runs_events",
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
            capture_output=True,
            text=True,
            timeout=600,
        )
        print(result.stdout[-3000:])
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
        assert "No issues found" in result.stdout
    finally:
        web.stop()
