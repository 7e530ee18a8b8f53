"""An operator's edit reaches running processes within a second, with no restart : web
processes and worker processes keep running while the test commits a new multiplier. They run with
the production refresh interval."""

import datetime
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from django.contrib.auth import get_user_model

from accounts.services import api_key_create
from billing.plans import plan_set
from routing.models import CatalogModel

from .emulators import anthropic_error
from .processes import (
    Api,
    redis_url_for,
    stack_env,
    start_gunicorn,
    wait_http,
    wait_terminal,
    web_and_worker,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def multiplier_seen(api, model_id) -> str:
    response = api.get("/api/v1/models", params={"limit": 100})
    assert response.status_code == 200, response.text
    return next(m["multiplier"] for m in response.json()["results"] if m["id"] == model_id)


def test_a_saved_edit_reaches_two_running_processes_within_a_second(catalog):
    user = get_user_model().objects.create(username="live-rules")
    plan_set(user=user, tier_slug="m1")
    _, key = api_key_create(user=user)
    env = stack_env(broker_url="memory://")
    env.pop("MASCHINA_RULES_REFRESH_SECS", None)  # the production interval
    log_dir = tempfile.mkdtemp(prefix="maschina-live-rules-")
    processes = [start_gunicorn(env, log_dir, workers=1) for _ in range(2)]
    try:
        apis = []
        for web, url in processes:
            wait_http(url + "/healthz", [web])
            apis.append(Api(url, key))
        assert [multiplier_seen(api, "claude-haiku-4-5") for api in apis] == [
            "1",
            "1",
        ]  # both hold a snapshot

        def delay_until_seen(api, committed_at):
            while multiplier_seen(api, "claude-haiku-4-5") != "2":
                assert time.monotonic() - committed_at < 10, "the edit never arrived"
                time.sleep(0.01)
            return time.monotonic() - committed_at

        for attempt in range(3):  # three edits, at different phases of the processes' refresh
            haiku = CatalogModel.objects.get(id="claude-haiku-4-5")
            haiku.multiplier = 2
            haiku.save()
            committed_at = time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                delays = list(
                    pool.map(lambda api, committed_at=committed_at: delay_until_seen(api, committed_at), apis)
                )
            print(f"edit {attempt + 1}: seen after {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")
            assert max(delays) <= 1.0, delays
            CatalogModel.objects.filter(id="claude-haiku-4-5").update(multiplier=1)
            for api in apis:
                while multiplier_seen(api, "claude-haiku-4-5") != "1":
                    time.sleep(0.01)
            time.sleep(0.17 * (attempt + 1))
    finally:
        for web, _ in processes:
            web.stop()


def test_a_saved_edit_reaches_the_worker_processes_within_a_second(catalog, anthropic_emulator):
    """The worker reads the rules when a run starts (for its fallback and the fallback's multiplier).
    Sonnet runs that fall back to haiku, started one after another right after haiku's multiplier
    goes from 1 to 2, show from when on the worker's processes (-c 2) bill the new figure."""
    anthropic_emulator.reset()
    broker = redis_url_for("live_rules")
    redis.Redis.from_url(broker).flushdb()
    user = get_user_model().objects.create(username="live-rules-worker")
    plan_set(user=user, tier_slug="m10")
    _, key = api_key_create(user=user)
    env = stack_env(broker_url=broker, anthropic=anthropic_emulator)
    env.pop("MASCHINA_RULES_REFRESH_SECS", None)
    with web_and_worker(env, "live-rules-worker") as url:
        api = Api(url, key)
        agent = api.post("/api/v1/agents", {"name": "fallback"}).json()

        def fallback_run():
            anthropic_emulator.queue("claude-sonnet-4-6", *[anthropic_error(529, "overloaded_error")] * 3)
            created = api.post(
                f"/api/v1/agents/{agent['id']}/run",
                {"input": {"message": "hi"}, "model": "claude-sonnet-4-6"},
            )
            assert created.status_code == 202, created.text
            run = wait_terminal(api, created.json()["id"])
            assert (run["status"], run["model"]) == ("completed", "claude-haiku-4-5"), run
            return datetime.datetime.fromisoformat(run["started_at"]).timestamp(), run["usage"]["multiplier"]

        for _ in range(4):  # both pool processes hold a snapshot
            assert fallback_run()[1] == "1"
        haiku = CatalogModel.objects.get(id="claude-haiku-4-5")
        haiku.multiplier = 2
        haiku.save()
        saved_at = time.time()
        seen = []
        while not seen or seen[-1][0] < 1.5:
            started_at, multiplier = fallback_run()
            seen.append((started_at - saved_at, multiplier))
        print(
            "run started after the edit (s) -> billed multiplier:",
            ", ".join(f"{d:.2f}->{m}" for d, m in seen),
        )
        assert all(m == "2" for d, m in seen if d >= 1.0), seen
        assert {m for _, m in seen} <= {"1", "2"}
