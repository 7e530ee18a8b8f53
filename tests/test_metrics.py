"""GET /metrics: the Prometheus text format behind a bearer token, summed over every web and worker
process (prometheus_client's multiprocess mode), its counters moved by a real run."""

import tempfile
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from .emulators import anthropic_error
from .processes import Api, manage, redis_url_for, stack_env, wait_terminal, web_and_worker

TOKEN = "metrics-test-token"


def samples(text: str) -> dict:
    """{(sample name, sorted labels): value} of a scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: dict, name: str, **labels) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def total(scrape: dict, name: str, **labels) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in scrape.items() if n == name and set(labels.items()) <= set(ls))


@pytest.mark.django_db
def test_metrics_is_off_without_a_token_and_needs_it(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    settings.METRICS_TOKEN = TOKEN
    for header in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"}):
        response = client.get("/metrics", **header)
        assert response.status_code == 401, header
        assert response.json()["error"]["code"] == "not_authenticated"
        assert response["WWW-Authenticate"] == "Bearer"
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert value(samples(response.content.decode()), "maschina_runs_queued") == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_scrape_before_and_after_runs_shows_the_counters_move(
    django_db_setup, catalog, anthropic_emulator, ollama_emulator
):
    anthropic_emulator.reset()
    ollama_emulator.reset()
    broker = redis_url_for("e2e")
    redis.Redis.from_url(broker).flushdb()
    env = stack_env(
        broker_url=broker,
        anthropic=anthropic_emulator,
        ollama=ollama_emulator,
        MASCHINA_METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(prefix="maschina-metrics-"),
        MASCHINA_NODE_NAME="node-a",
    )
    with web_and_worker(env, "metrics") as url:
        scraper = Api(url, TOKEN)
        username = f"metrics-{time.monotonic_ns()}"
        manage(env, "set_tier", username, "m1")
        api = Api(url, manage(env, "create_api_key", username).strip().splitlines()[-1])
        agent = api.post("/api/v1/agents", {"name": "metered"}).json()["id"]
        before = samples(scraper.get("/metrics").text)

        completed = api.post(f"/api/v1/agents/{agent}/run", {"input": {"message": "hi"}}).json()
        # The first run ends before the error is queued, so the error goes to the second one.
        assert wait_terminal(api, completed["id"])["status"] == "completed"
        anthropic_emulator.queue("claude-haiku-4-5", anthropic_error(401, "authentication_error"))
        failed = api.post(f"/api/v1/agents/{agent}/run", {"input": {"message": "hi"}}).json()
        refused = api.post(
            f"/api/v1/agents/{agent}/run", {"input": {"message": "hi"}, "model": "claude-opus-4-6"}
        )
        assert refused.status_code == 403
        failed = wait_terminal(api, failed["id"])
        assert (failed["status"], failed["error"]["code"]) == ("failed", "provider_auth")
        billed = api.get(f"/api/v1/runs/{completed['id']}").json()["usage"]["billed_tokens"]
        assert billed > 0

        # Two gunicorn workers and the celery worker wrote the samples; any web worker sums them all.
        after = samples(scraper.get("/metrics").text)
        again = samples(scraper.get("/metrics").text)

    def moved(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("maschina_runs_admitted_total", model="claude-haiku-4-5") == 2
    assert moved("maschina_runs_refused_total", reason="model_not_allowed") == 1
    assert moved("maschina_runs_finished_total", status="completed", provider="anthropic", error_code="") == 1
    assert (
        moved(
            "maschina_runs_finished_total", status="failed", provider="anthropic", error_code="provider_auth"
        )
        == 1
    )
    assert moved("maschina_billed_tokens_total", tier="m1", model="claude-haiku-4-5") == billed
    assert moved("maschina_admission_seconds_count") == 3
    assert moved("maschina_provider_call_seconds_count", provider="anthropic", outcome="ok") == 1
    assert moved("maschina_provider_call_seconds_count", provider="anthropic", outcome="provider_auth") == 1
    assert value(after, "maschina_runs_in_flight", node="node-a") == 0
    assert value(after, "maschina_runs_queued") == 0
    assert total(again, "maschina_runs_admitted_total") == total(after, "maschina_runs_admitted_total")


@pytest.mark.django_db
def test_sweeper_actions_and_webhook_deliveries_are_counted(make_user, make_agent, settings):
    """In-process: this process's own registry (no PROMETHEUS_MULTIPROC_DIR in the test run)."""
    import datetime as dt

    from prometheus_client import REGISTRY

    from billing.models import Alert
    from billing.webhooks import alert_deliver, webhook_set
    from runs.models import Run, RunStatus
    from runs.tasks import sweep_runs

    from .processes import free_port

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    user = make_user("access")
    agent = make_agent(user)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    run = Run.objects.create(
        user=user,
        agent=agent,
        tier="access",
        model="ollama/mistral",
        catalog_model="ollama/mistral",
        provider="ollama",
        multiplier=0,
        system_prompt="",
        input={"message": "x"},
        timeout_secs=60,
        max_tokens=1,
        period=long_ago.date().replace(day=1),
        reserved_tokens=0,
        status=RunStatus.FAILED,
        finished_at=long_ago,
    )
    settled = sample("maschina_sweeper_actions_total", action="settled")
    failed_runs = sample("maschina_runs_finished_total", status="failed", provider="ollama", error_code="")
    assert sweep_runs()["settled"] == 1
    assert sample("maschina_sweeper_actions_total", action="settled") == settled + 1
    finished = sample("maschina_runs_finished_total", status="failed", provider="ollama", error_code="")
    assert finished == failed_runs + 1

    settings.ALERT_WEBHOOK_TIMEOUT_SECS = 1
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the target is on 127.0.0.1
    webhook_set(plan=user.plan, url=f"http://127.0.0.1:{free_port()}/hook")  # nobody listens there
    alert = Alert.objects.create(user=user, period=run.period, quota="runs", threshold=80, used=8, limit=10)
    failed = sample("maschina_webhook_deliveries_total", outcome="failed")
    assert alert_deliver(alert.pk) is False
    assert sample("maschina_webhook_deliveries_total", outcome="failed") == failed + 1
