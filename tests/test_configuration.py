"""Guards on the configuration the reliability of the pipeline rests on (DESIGN.md, "Reliability
rules"): if one of these drifts, a run can be lost, run twice, or outlive its limits."""

import subprocess
import sys

from django.conf import settings

from maschina.celery import app
from providers import anthropic as anthropic_runner
from runs.dispatch import task_time_limits
from runs.tasks import execute_run

from .processes import ROOT, base_env


def test_celery_delivery_settings():
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.task_publish_retry is False  # a dead broker must not hold an API request
    assert execute_run.acks_late is True
    assert execute_run.name == "runtime.execute_run"


def test_time_limits_nest_inside_the_visibility_timeout():
    soft, hard = task_time_limits(settings.RUN_TIMEOUT_CAP_SECS)
    assert settings.RUN_TIMEOUT_CAP_SECS < soft < hard < settings.BROKER_VISIBILITY_TIMEOUT_SECS
    if not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        assert (
            app.conf.broker_transport_options["visibility_timeout"] == settings.BROKER_VISIBILITY_TIMEOUT_SECS
        )


def test_backoffs_stay_far_below_the_limits():
    assert settings.PROVIDER_BACKOFF_CAP_SECS < settings.TASK_SOFT_MARGIN_SECS
    assert execute_run.retry_backoff_max < settings.BROKER_VISIBILITY_TIMEOUT_SECS
    assert settings.PROVIDER_MAX_ATTEMPTS >= 1
    # A dead worker's run is reaped within timeout + 60 s (CONTRACT section 7).
    assert settings.SWEEP_REAP_GRACE_SECS + settings.SWEEP_INTERVAL_SECS <= 60


def test_anthropic_sdk_retries_are_off_and_calls_bounded(settings):
    settings.ANTHROPIC_API_KEY = "sk-ant-guard"
    client = anthropic_runner._client()
    assert client.max_retries == 0
    assert client.timeout == settings.RUN_TIMEOUT_CAP_SECS


def test_secret_key_is_required_without_debug():
    env = base_env(SECRET_KEY="")
    env.pop("SECRET_KEY")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='maschina.settings'; django.setup()",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_a_live_worker_is_never_taken_for_dead():
    # Many heartbeats fit in the stale window, and so does a database retry.
    assert settings.HEARTBEAT_STALE_SECS >= 10 * settings.CANCEL_POLL_SECS
    assert settings.HEARTBEAT_STALE_SECS > 5 * settings.DB_RETRY_BACKOFF_CAP_SECS


def test_an_empty_anthropic_base_url_is_unset():
    """Compose files and shells pass `ANTHROPIC_BASE_URL=` for "not set"; the SDK would take the empty
    string as its base URL and every Claude run would fail as provider_unavailable."""
    script = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='maschina.settings'; django.setup()\n"
        "from django.conf import settings\n"
        "from providers import anthropic\n"
        "settings.ANTHROPIC_API_KEY = 'sk-ant-x'\n"
        "print(settings.ANTHROPIC_BASE_URL, anthropic._client().base_url)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=base_env(ANTHROPIC_BASE_URL="", DEBUG="1"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "https://api.anthropic.com"]
