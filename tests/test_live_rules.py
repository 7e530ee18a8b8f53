"""An operator's edit reaches running processes within a second, with no restart (issue 5): two
gunicorn processes (one worker each) keep serving while the test commits a new multiplier, and
each is polled until it shows it. They run with the production refresh interval."""
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model

from accounts.services import api_key_create
from billing.services import plan_set
from routing.models import CatalogModel

from .processes import Api, stack_env, start_gunicorn, wait_http

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
        assert [multiplier_seen(api, "claude-haiku-4-5") for api in apis] == ["1", "1"]  # both hold a snapshot

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
                delays = list(pool.map(lambda api: delay_until_seen(api, committed_at), apis))
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
