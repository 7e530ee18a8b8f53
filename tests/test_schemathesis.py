"""Schemathesis against the running app : generated requests to every operation of
/api/schema/, valid and invalid, over HTTP to gunicorn on PostgreSQL. No response may be a server
error, and every documented response must match the schema."""

import subprocess
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from accounts.services import api_key_create
from billing.plans import plan_set

from .processes import BIN, ROOT, stack_env, start_gunicorn, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance"


def test_generated_requests_find_no_server_error_and_no_schema_violation(catalog):
    user = get_user_model().objects.create(username="schemathesis")
    plan_set(user=user, tier_slug="m10")
    _, key = api_key_create(user=user)
    env = stack_env(broker_url="memory://")
    log_dir = tempfile.mkdtemp(prefix="maschina-schemathesis-")
    web, url = start_gunicorn(env, log_dir)
    report = Path(log_dir) / "report"
    try:
        wait_http(url + "/healthz", [web])
        result = subprocess.run(
            [
                str(BIN / "python"),
                "tests/schemathesis_cli.py",
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
                "--workers",
                "2",
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
