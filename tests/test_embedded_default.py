"""The README's first command: with nothing configured, the service runs on a SQLite file and the
embedded (filesystem) broker, with a separate worker process. Same processes as scripts/serve."""

import sys
import tempfile

import pytest

from .emulators import Reply
from .processes import (
    Api,
    EventStream,
    Process,
    base_env,
    free_port,
    manage,
    start_uvicorn,
    start_worker,
    wait_http,
    wait_terminal,
    wait_worker_ready,
)

pytestmark = pytest.mark.slow


def test_default_configuration_runs_a_model_end_to_end(ollama_emulator, anthropic_emulator):
    ollama_emulator.reset()
    var_dir = tempfile.mkdtemp(prefix="maschina-default-")
    env = base_env(
        DEBUG="1",
        SECRET_KEY="",
        MASCHINA_VAR_DIR=var_dir,
        OLLAMA_BASE_URL=ollama_emulator.url,
        ANTHROPIC_API_KEY="sk-ant-default",
        ANTHROPIC_BASE_URL=anthropic_emulator.url,
    )
    manage(env, "migrate", "--noinput")
    manage(env, "set_tier", "dana", "m1")
    key = manage(env, "create_api_key", "dana").strip().splitlines()[-1]

    log_dir = tempfile.mkdtemp(prefix="maschina-default-logs-")
    port = free_port()
    web = Process(
        "runserver",
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        env,
        log_dir,
    )
    worker = start_worker(env, log_dir, beat=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", [web, worker])
        wait_worker_ready(worker)
        client = Api(url, key)
        assert client.get("/healthz").json() == {"database": "ok", "broker": "ok"}
        agent_id = client.post("/api/v1/agents", {"name": "local"}).json()["id"]
        for model, billed in [("ollama/mistral", 0), ("claude-haiku-4-5", 62)]:
            response = client.post(
                f"/api/v1/agents/{agent_id}/run", {"input": {"message": "hi"}, "model": model}
            )
            assert response.status_code == 202, response.text
            run = wait_terminal(client, response.json()["id"], timeout=60)
            assert run["status"] == "completed", (run, worker.tail())
            assert run["usage"]["billed_tokens"] == billed
        usage = client.get("/api/v1/usage").json()
        assert (usage["tokens"]["used"], usage["tokens"]["reserved"], usage["runs"]["used"]) == (62, 0, 2)
        # SQLite settles in four statements (PostgreSQL in one): the per-model counters too.
        assert [(m["model"], m["runs"], m["billed_tokens"]) for m in usage["by_model"]] == [
            ("claude-haiku-4-5", 1, 62),
            ("ollama/mistral", 1, 0),
        ]
        # The limits' ORM way: both runs' slots came back and the key's month was settled; the
        # minute bucket (m1: 60, one back a second) counts this run.
        (line,) = usage["by_key"]
        assert (line["runs"], line["billed_tokens"]) == (2, 62)
        body = {"input": {"message": "again"}, "model": "ollama/mistral"}
        first = client.post(f"/api/v1/agents/{agent_id}/run", body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202, first.text
        assert (
            first.headers["X-RateLimit-Limit"] == "60" and int(first.headers["X-RateLimit-Remaining"]) <= 59
        )
        replay = client.post(f"/api/v1/agents/{agent_id}/run", body, headers={"Idempotency-Key": "k1"})
        assert replay.json()["id"] == first.json()["id"] and replay.headers["Idempotent-Replayed"] == "true"
        wait_terminal(client, first.json()["id"], timeout=60)
        manage(env, "set_tier", "dana", "m1", "--max-concurrent-runs", "0")
        refused = client.post(f"/api/v1/agents/{agent_id}/run", body)
        assert refused.status_code == 429 and refused.json()["error"]["scope"] == "concurrency"
        assert client.get("/api/v1/usage").json()["runs"]["used"] == 3
    finally:
        web.stop()
        worker.stop()


def test_default_configuration_waits_and_streams_under_uvicorn(anthropic_emulator, ollama_emulator):
    """CONTRACT section 9 on the embedded default: the events go through the database (no Redis),
    the web app is the ASGI application under uvicorn; a short retention shows what is left after."""
    import time

    anthropic_emulator.reset()
    var_dir = tempfile.mkdtemp(prefix="maschina-default-")
    env = base_env(
        DEBUG="1",
        SECRET_KEY="",
        MASCHINA_VAR_DIR=var_dir,
        OLLAMA_BASE_URL=ollama_emulator.url,
        ANTHROPIC_API_KEY="sk-ant-default",
        ANTHROPIC_BASE_URL=anthropic_emulator.url,
        MASCHINA_RUN_EVENTS_RETENTION_SECS="4",
    )
    manage(env, "migrate", "--noinput")
    manage(env, "set_tier", "erin", "m1")
    key = manage(env, "create_api_key", "erin").strip().splitlines()[-1]
    log_dir = tempfile.mkdtemp(prefix="maschina-default-logs-")
    web, url = start_uvicorn(env, log_dir)
    worker = start_worker(env, log_dir)
    try:
        wait_http(url + "/healthz", [web, worker])
        wait_worker_ready(worker)
        client = Api(url, key)
        # The static files (WhiteNoise, async-capable) and Swagger UI, under ASGI too.
        assert client.get("/static/admin/css/base.css").status_code == 200
        assert client.get("/api/docs/").status_code == 200
        agent_id = client.post("/api/v1/agents", {"name": "chat"}).json()["id"]
        body = {"input": {"message": "hi"}, "model": "claude-haiku-4-5"}

        waited = client.session.post(f"{url}/api/v1/agents/{agent_id}/run?wait=30", json=body, timeout=60)
        assert waited.status_code == 200, waited.text
        assert waited.json()["status"] == "completed"
        assert waited.json()["output"]["text"] == "echo: hi"

        words = [f"t{i} " for i in range(8)]
        anthropic_emulator.queue("claude-haiku-4-5", Reply(chunks=words, delta_delay=0.3))
        run_id = client.post(f"/api/v1/agents/{agent_id}/run", body).json()["id"]
        got = list(EventStream(client, run_id))
        assert [event_id for _, event_id, _, _ in got] == list(range(1, len(got) + 1))
        assert got[0][2] == "status" and got[-1][2] == "done"
        deltas = [(at, data["text"]) for at, _, name, data in got if name == "delta"]
        assert "".join(text for _, text in deltas) == "".join(words) == got[-1][3]["output"]["text"]
        assert got[-1][0] - deltas[0][0] > 1.0  # the first fragment well before the end
        replay = [(event_id, name, data) for _, event_id, name, data in EventStream(client, run_id)]
        assert replay == [(event_id, name, data) for _, event_id, name, data in got]
        assert [e[1] for e in EventStream(client, run_id, 2)] == [e[0] for e in replay[2:]]

        time.sleep(4.5)  # past retention: the run's status and done, from its row
        late = [(event_id, name, data["status"]) for _, event_id, name, data in EventStream(client, run_id)]
        assert late == [(1, "status", "completed"), (2, "done", "completed")]
    finally:
        web.stop()
        worker.stop()
