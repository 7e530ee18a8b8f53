"""End to end: the web app under gunicorn (2 workers) and a real `celery worker` process, on the
machine's PostgreSQL (the test database) and Redis, against the provider emulators. A user and key
are made with the management commands, everything else goes over HTTP."""

import time

import pytest
import redis

from billing.models import LedgerEntry

from .emulators import Reply, anthropic_error
from .processes import Api, manage, redis_url_for, stack_env, wait_terminal, web_and_worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REDIS_URL = redis_url_for("e2e")


@pytest.fixture(scope="module")
def stack(django_db_setup, anthropic_emulator, ollama_emulator):
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = stack_env(broker_url=REDIS_URL, anthropic=anthropic_emulator, ollama=ollama_emulator)
    with web_and_worker(env, "e2e") as url:
        yield {"env": env, "url": url}


@pytest.fixture
def api(stack, catalog, anthropic_emulator, ollama_emulator):
    anthropic_emulator.reset()
    ollama_emulator.reset()

    def make(tier):
        username = f"e2e-{tier}-{time.monotonic_ns()}"
        manage(stack["env"], "set_tier", username, tier)
        key = manage(stack["env"], "create_api_key", username, "--name", "e2e").strip().splitlines()[-1]
        assert key.startswith("msk_live_") and len(key) >= len("msk_live_") + 40
        return Api(stack["url"], key)

    return make


def test_healthz(stack):
    response = Api(stack["url"]).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "broker": "ok"}


def test_runs_of_every_provider_are_executed_and_billed(api, anthropic_emulator, ollama_emulator):
    client = api("m10")
    agent = client.post("/api/v1/agents", {"name": "e2e agent", "system_prompt": "Answer briefly."})
    assert agent.status_code == 201, agent.text
    agent_id = agent.json()["id"]

    expected = {  # model -> (raw input, raw output, multiplier, billed)
        "claude-haiku-4-5": (32, 30, "1", 62),
        "claude-sonnet-4-6": (32, 30, "3", 186),
        "claude-opus-4-6": (32, 30, "15", 930),
        "ollama/llama3.2": (12, 8, "0", 0),
    }
    run_ids = {}
    for model in expected:
        response = client.post(
            f"/api/v1/agents/{agent_id}/run", {"input": {"message": f"hi {model}"}, "model": model}
        )
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "queued"
        run_ids[model] = response.json()["id"]

    for model, (raw_in, raw_out, multiplier, billed) in expected.items():
        run = wait_terminal(client, run_ids[model])
        assert run["status"] == "completed", run
        assert (run["model"], run["requested_model"]) == (model, model)
        assert run["usage"] == {
            "input_tokens": raw_in,
            "output_tokens": raw_out,
            "multiplier": multiplier,
            "billed_tokens": billed,
        }
        assert run["output"]["text"].endswith(f"hi {model}")
        assert run["error"] is None

    # The system prompt and max_tokens reached the providers as sent.
    sent = anthropic_emulator.calls_for("claude-opus-4-6")[0][1]
    assert (sent["system"], sent["max_tokens"]) == ("Answer briefly.", 4096)
    assert ollama_emulator.calls_for("llama3.2")[0][1]["stream"] is False

    usage = client.get("/api/v1/usage").json()
    assert usage["tier"] == "m10"
    assert usage["tokens"] == {
        "used": 1178,
        "reserved": 0,
        "limit": 10_000_000,
        "remaining": 10_000_000 - 1178,
    }
    assert usage["runs"] == {"used": 4, "limit": 10_000, "remaining": 9_996}
    assert {
        m["model"]: (m["runs"], m["input_tokens"], m["output_tokens"], m["billed_tokens"])
        for m in usage["by_model"]
    } == {model: (1, raw_in, raw_out, billed) for model, (raw_in, raw_out, _, billed) in expected.items()}
    assert LedgerEntry.objects.count() == 4
    runs = client.get("/api/v1/runs?status=completed").json()
    assert runs["count"] == 4
    assert [r["id"] for r in runs["results"]] == [
        run_ids[m] for m in reversed(list(expected))
    ]  # newest first


def test_tier_default_and_fallback_over_the_real_pipeline(api, anthropic_emulator):
    client = api("m5")
    agent_id = client.post("/api/v1/agents", {"name": "fallback"}).json()["id"]
    anthropic_emulator.queue("claude-sonnet-4-6", *[anthropic_error(529, "overloaded_error")] * 3)
    response = client.post(f"/api/v1/agents/{agent_id}/run", {"input": {"message": "hi"}})
    assert response.status_code == 202
    assert response.json()["requested_model"] is None
    run = wait_terminal(client, response.json()["id"])
    assert run["status"] == "completed", run
    assert (run["requested_model"], run["model"]) == (None, "claude-haiku-4-5")
    assert run["usage"]["multiplier"] == "1" and run["usage"]["billed_tokens"] == 62
    assert len(anthropic_emulator.calls) == 4
    usage = client.get("/api/v1/usage").json()
    assert usage["tokens"]["used"] == 62 and usage["tokens"]["reserved"] == 0
    assert [m["model"] for m in usage["by_model"]] == ["claude-haiku-4-5"]


def test_cancel_an_executing_run(api, anthropic_emulator):
    client = api("m1")
    agent_id = client.post("/api/v1/agents", {"name": "slow"}).json()["id"]
    anthropic_emulator.queue("claude-haiku-4-5", Reply(delay=3))
    run_id = client.post(f"/api/v1/agents/{agent_id}/run", {"input": {"message": "slow"}}).json()["id"]
    deadline = time.monotonic() + 15
    while not anthropic_emulator.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert anthropic_emulator.calls, "the worker never called the provider"
    canceled = client.post(f"/api/v1/runs/{run_id}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    time.sleep(3.5)  # the provider answers, late: the worker reads its message_start, then closes it
    run = client.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "canceled" and run["output"] is None
    # Billed for what the provider reported: the input (20 + 5 + 7 cache) and message_start's 1 output.
    usage = run["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["billed_tokens"]) == (32, 1, 33)
    usage = client.get("/api/v1/usage").json()
    assert usage["tokens"]["reserved"] == 0 and usage["tokens"]["used"] == 33
    assert client.post(f"/api/v1/runs/{run_id}/cancel").status_code == 409


def test_provider_failure_over_the_real_pipeline(api, ollama_emulator):
    client = api("access")
    agent_id = client.post("/api/v1/agents", {"name": "local", "model": "ollama/nosuch"}).json()["id"]
    ollama_emulator.queue("nosuch", Reply(status=404, body={"error": "model 'nosuch' not found"}))
    run_id = client.post(f"/api/v1/agents/{agent_id}/run", {"input": {"message": "x"}}).json()["id"]
    run = wait_terminal(client, run_id)
    assert (run["status"], run["error"]["code"], run["requested_model"]) == (
        "failed",
        "model_not_found",
        "ollama/nosuch",
    )
    assert client.get("/api/v1/usage").json()["runs"]["used"] == 1
