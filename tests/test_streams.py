"""Waiting for a run and following its events (CONTRACT section 9), end to end: the web app under
uvicorn (maschina.asgi), a real `celery worker`, the test database (PostgreSQL) and a Redis of our
own, and the Anthropic emulator streaming slowly (a delay between fragments)."""

import threading
import time

import pytest
import redis

from runs.models import Run

from .emulators import Reply
from .processes import (
    Api,
    EventStream,
    RedisServer,
    manage,
    stack_env,
    start_gunicorn,
    start_uvicorn,
    start_worker,
    wait_http,
    wait_terminal,
    wait_worker_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MODEL = "claude-haiku-4-5"  # 1x: billed = raw input + output


@pytest.fixture(scope="module")
def stack(django_db_setup, anthropic_emulator, ollama_emulator, tmp_path_factory):
    broker = RedisServer()
    env = stack_env(
        broker_url=broker.url,
        anthropic=anthropic_emulator,
        ollama=ollama_emulator,
        MASCHINA_RUN_EVENTS_KEEPALIVE_SECS="1",
    )
    log_dir = tmp_path_factory.mktemp("streams-logs")
    web, url = start_uvicorn(env, log_dir)
    worker = start_worker(env, log_dir, concurrency=8)
    try:
        wait_http(url + "/healthz", [web, worker])
        wait_worker_ready(worker)
        yield {"env": env, "url": url, "redis": redis.Redis.from_url(broker.url), "web": web}
    finally:
        web.stop()
        worker.stop()
        broker.stop()


@pytest.fixture
def client(stack, catalog, anthropic_emulator, ollama_emulator):
    anthropic_emulator.reset()
    ollama_emulator.reset()

    def make():
        username = f"streams-{time.monotonic_ns()}"
        manage(stack["env"], "set_tier", username, "m10")
        key = manage(stack["env"], "create_api_key", username).strip().splitlines()[-1]
        api = Api(stack["url"], key)
        api.agent_id = api.post("/api/v1/agents", {"name": "streamer"}).json()["id"]
        return api

    yield make
    # The worker may still be running or settling a test's run: let it finish before the database is
    # flushed, or its transaction and the flush's TRUNCATE can deadlock.
    deadline = time.monotonic() + 30
    while Run.objects.filter(settled_at__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def usage(run):
    return run["usage"]["input_tokens"], run["usage"]["output_tokens"], run["usage"]["billed_tokens"]


def start(api, wait=None, model=MODEL, message="hello"):
    path = f"/api/v1/agents/{api.agent_id}/run" + (f"?wait={wait}" if wait is not None else "")
    return api.session.post(
        api.base_url + path, json={"input": {"message": message}, "model": model}, timeout=90
    )


def test_deltas_arrive_while_the_model_generates_and_concatenate_to_the_output(client, anthropic_emulator):
    api = client()
    tag = time.monotonic_ns()  # this test's fragments, told apart from any other run's on the shared emulator
    words = [f"w{i}-{tag} " for i in range(10)]
    anthropic_emulator.queue(MODEL, Reply(chunks=words, delta_delay=0.2))
    run_id = start(api).json()["id"]
    stream = EventStream(api, run_id)
    assert stream.response.status_code == 200
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    got = list(stream)
    ids = [event_id for _, event_id, _, _ in got]
    assert ids == list(range(1, len(got) + 1))
    names = [name for _, _, name, _ in got]
    assert names[0] == "status" and names[-1] == "done" and names[-2] == "status"
    deltas = [(at, data["text"]) for at, _, name, data in got if name == "delta"]
    done_at, done = got[-1][0], got[-1][3]
    assert done["status"] == "completed"
    assert "".join(text for _, text in deltas) == "".join(words) == done["output"]["text"]
    assert done_at - deltas[0][0] > 1.0  # the first fragment came long before the end
    # Each fragment reached the client soon after the emulator sent it (same machine, same clock).
    sent = next(at for at, text in list(anthropic_emulator.deltas) if text == words[0])
    assert deltas[0][0] - sent < 0.5
    run = api.get(f"/api/v1/runs/{run_id}").json()
    assert usage(run) == (32, 30, 62)

    # A client that connects later gets every event again; Last-Event-ID resumes after that event.
    replay = [(event_id, name, data) for _, event_id, name, data in EventStream(api, run_id)]
    assert replay == [(event_id, name, data) for _, event_id, name, data in got]
    resumed = [(event_id, name, data) for _, event_id, name, data in EventStream(api, run_id, 3)]
    assert resumed == replay[3:]
    at_done = EventStream(api, run_id, len(replay))
    assert list(at_done) == []  # N was the done event: the stream ends at once


def test_keep_alive_comments_while_nothing_happens(client, anthropic_emulator):
    api = client()
    anthropic_emulator.queue(MODEL, Reply(delay=2.5))
    run_id = start(api).json()["id"]
    stream = EventStream(api, run_id)
    events = list(stream)
    assert events[-1][2] == "done"
    first_delta = next(at for at, _, name, _ in events if name == "delta")
    assert [text for at, text in stream.comments if at < first_delta].count("keep-alive") >= 1


def test_events_auth_and_isolation_answer_json_before_any_stream(client):
    owner, other = client(), client()
    run_id = start(owner).json()["id"]
    missing = other.get(f"/api/v1/runs/{run_id}/events")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not found."}}
    anonymous = Api(owner.base_url).get(f"/api/v1/runs/{run_id}/events")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    bad = Api(owner.base_url, "msk_live_" + "x" * 40).get(f"/api/v1/runs/{run_id}/events")
    assert (bad.status_code, bad.json()["error"]["code"]) == (401, "invalid_api_key")


@pytest.mark.parametrize(
    "last_event_id", ["", "abc", "-1", "1.5", "\u0665", "1" * 19, "1" * 5000, "J+(*ah4V?=L"]
)
def test_a_bad_last_event_id_is_refused_before_any_stream(client, last_event_id):
    api = client()
    run_id = start(api).json()["id"]
    response = api.session.get(
        f"{api.base_url}/api/v1/runs/{run_id}/events",
        headers={"Last-Event-ID": last_event_id.encode()},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()["error"]["fields"]) == ["Last-Event-ID"]


def test_events_answer_only_get_and_say_so(client):
    api = client()
    run_id = start(api).json()["id"]
    response = api.session.request("TRACE", f"{api.base_url}/api/v1/runs/{run_id}/events", timeout=10)
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")
    assert response.headers["Allow"] == "GET"


def test_a_client_that_disconnects_is_forgotten_at_once(client, anthropic_emulator, stack):
    api = client()
    anthropic_emulator.queue(MODEL, Reply(delay=6))
    run_id = start(api).json()["id"]
    channel = f"maschina:run:{run_id}"

    def subscribers():
        return dict(stack["redis"].pubsub_numsub(channel))[channel.encode()]

    stream = EventStream(api, run_id)
    deadline = time.monotonic() + 5
    while subscribers() != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert subscribers() == 1
    stream.close()
    closed_at = time.monotonic()
    while subscribers() != 0 and time.monotonic() - closed_at < 3:
        time.sleep(0.02)
    assert subscribers() == 0
    assert time.monotonic() - closed_at < 1.0


def test_wait_answers_within_half_a_second_of_the_end(client, anthropic_emulator):
    import datetime as dt

    api = client()
    anthropic_emulator.queue(MODEL, Reply(delay=1.0))
    response = start(api, wait=30)
    answered = dt.datetime.now(dt.UTC)
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "completed" and run["output"]["text"] == "echo: hello"
    finished = dt.datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00"))
    assert (answered - finished).total_seconds() < 0.5

    # At the limit: 202 with the run as it stands.
    anthropic_emulator.queue(MODEL, Reply(delay=4))
    started = time.monotonic()
    held = start(api, wait=1)
    assert held.status_code == 202, held.text
    assert held.json()["status"] in ("queued", "executing")
    assert 1.0 <= time.monotonic() - started < 2.0
    run_id = held.json()["id"]
    polled = api.session.get(f"{api.base_url}/api/v1/runs/{run_id}?wait=30", timeout=60)
    assert polled.status_code == 200
    assert polled.json()["status"] == "completed"
    assert api.get(f"/api/v1/runs/{run_id}?wait=0").json()["status"] == "completed"


@pytest.mark.parametrize("wait", ["61", "-1", "abc", "1.5", "\u0665", "", "5%0A"])
def test_a_bad_wait_is_refused_and_changes_nothing(client, wait):
    api = client()
    before = api.get("/api/v1/runs").json()["count"]
    response = start(api, wait=wait)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "wait" in response.json()["error"]["fields"]
    assert api.get("/api/v1/runs").json()["count"] == before
    run_id = start(api).json()["id"]
    detail = api.get(f"/api/v1/runs/{run_id}?wait={wait}")
    assert (detail.status_code, list(detail.json()["error"]["fields"])) == (400, ["wait"])
    assert Api(api.base_url).get(f"/api/v1/runs/{run_id}?wait={wait}").status_code == 401


def test_cancel_mid_stream_ends_the_stream_closes_the_provider_and_bills_what_it_reported(
    client, anthropic_emulator, stack
):
    api = client()
    anthropic_emulator.queue(MODEL, Reply(chunks=["word "] * 200, delta_delay=0.05))
    run_id = start(api).json()["id"]
    stream = EventStream(api, run_id)
    received = []
    for event in stream:
        received.append(event)
        if sum(1 for e in received if e[2] == "delta") == 3:
            break
    assert api.post(f"/api/v1/runs/{run_id}/cancel").json()["status"] == "canceled"
    rest = list(stream)
    assert rest[-1][2] == "done" and rest[-1][3]["status"] == "canceled"
    deadline = time.monotonic() + 5
    while not anthropic_emulator.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    [(model, sent)] = anthropic_emulator.disconnects
    assert model == MODEL and sent < 200
    while time.monotonic() < deadline:
        run = api.get(f"/api/v1/runs/{run_id}").json()
        if run["usage"]["billed_tokens"] is not None:
            break
        time.sleep(0.1)
    assert (run["status"], usage(run)) == ("canceled", (32, 1, 33))
    manage(stack["env"], "billing_audit")  # exits non-zero on any discrepancy


def test_a_stream_that_breaks_after_text_ends_failed_with_its_text_sent_once(client, anthropic_emulator):
    api = client()
    anthropic_emulator.queue(MODEL, Reply(chunks=["a ", "b ", "c "], fail_after=2, fail_mode="drop"))
    run_id = start(api).json()["id"]
    got = list(EventStream(api, run_id))
    assert "".join(data["text"] for _, _, name, data in got if name == "delta") == "a b "
    assert got[-1][2] == "done" and got[-1][3]["status"] == "failed"
    assert len(anthropic_emulator.calls_for(MODEL)) == 1


def test_many_clients_follow_one_run(client, anthropic_emulator):
    api = client()
    anthropic_emulator.queue(MODEL, Reply(chunks=[f"{i} " for i in range(20)], delta_delay=0.05))
    run_id = start(api).json()["id"]
    results = [None] * 20

    def follow(index):
        results[index] = [(event_id, name, data) for _, event_id, name, data in EventStream(api, run_id)]

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(result == results[0] for result in results)
    assert results[0][-1][1] == "done"
    assert wait_terminal(api, run_id)["output"]["text"] == "".join(f"{i} " for i in range(20))


def test_under_a_wsgi_server_both_work_holding_a_worker_each(client, anthropic_emulator, stack, tmp_path):
    web, url = start_gunicorn(stack["env"], tmp_path, workers=3)
    try:
        wait_http(url + "/healthz", [web])
        api = client()
        wsgi = Api(url, api.session.headers["Authorization"].removeprefix("Bearer "))
        wsgi.agent_id = api.agent_id
        anthropic_emulator.queue(MODEL, Reply(delay=0.5))
        waited = start(wsgi, wait=30)
        assert (waited.status_code, waited.json()["status"]) == (200, "completed")
        # 3.2 s of fragments: a stream request that reaches a gunicorn worker still starting reads the
        # first ones late, together, and the rest must still come one by one.
        anthropic_emulator.queue(MODEL, Reply(chunks=[f"{i} " for i in range(16)], delta_delay=0.2))
        run_id = start(wsgi).json()["id"]
        got = list(EventStream(wsgi, run_id))
        deltas = [at for at, _, name, _ in got if name == "delta"]
        assert got[-1][2] == "done" and got[-1][3]["output"]["text"] == "".join(f"{i} " for i in range(16))
        assert got[-1][0] - deltas[0] > 0.8  # sent as they came, not all at the end
    finally:
        web.stop()
