"""Idempotent run creation (CONTRACT section 12)."""

import datetime as dt

import pytest
from django.utils import timezone

from billing.models import Throttle, UsagePeriod
from billing.plans import plan_set
from runs.models import Run

from .concurrency import race

pytestmark = pytest.mark.django_db

RACERS = 20
BODY = {"input": {"message": "hi"}, "max_tokens": 100}


def post(client, agent, key, body=BODY, **headers):
    return client.post(
        f"/api/v1/agents/{agent.id}/run", body, format="json", HTTP_IDEMPOTENCY_KEY=key, **headers
    )


def counters():
    return Run.objects.count(), UsagePeriod.objects.get().tokens_reserved, Throttle.objects.get().active_runs


def test_a_retry_returns_the_same_run_and_admits_nothing(
    make_client, make_agent, django_capture_on_commit_callbacks
):
    client = make_client("m1", requests_per_minute=10)
    agent = make_agent(client.user)
    with django_capture_on_commit_callbacks(execute=False) as first_tasks:
        first = post(client, agent, "order-1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first
    before = counters()
    # the same body, however it is spelled, is the same request
    retry_body = {"max_tokens": 100, "input": {"message": "hi"}}
    with django_capture_on_commit_callbacks(execute=False) as retry_tasks:
        retry = post(client, agent, "order-1", retry_body)
    assert retry.status_code == 202
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == first.json()["id"]
    assert retry["X-RateLimit-Remaining"] == "9"  # nothing drawn by the replay
    assert counters() == before
    assert len(first_tasks) == 1 and len(retry_tasks) == 0
    # a terminal run replays with 200
    Run.objects.filter(pk=first.json()["id"]).update(status="completed")
    assert post(client, agent, "order-1").status_code == 200


def test_the_same_key_with_another_body_or_agent_is_refused(make_client, make_agent):
    client = make_client("m1")
    agent, other = make_agent(client.user), make_agent(client.user, name="other")
    assert post(client, agent, "k").status_code == 202
    for response in (post(client, agent, "k", {"input": {"message": "bye"}}), post(client, other, "k")):
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert Run.objects.count() == 1


def test_keys_are_scoped_to_the_user(make_client, make_agent):
    alice, bob = make_client("m1"), make_client("m1")
    assert post(alice, make_agent(alice.user), "shared").status_code == 202
    assert post(bob, make_agent(bob.user), "shared").status_code == 202
    assert Run.objects.count() == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "clé", "tab\there", "nul\x00", "emoji🙂"])
def test_bad_idempotency_keys_are_refused_and_admit_nothing(make_client, make_agent, key):
    client = make_client("m1")
    agent = make_agent(client.user)
    response = post(client, agent, key)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid" and "Idempotency-Key" in error["fields"]
    assert not Run.objects.exists() and not UsagePeriod.objects.exists()


def test_the_longest_key_and_spaces_are_accepted(make_client, make_agent):
    client = make_client("m1")
    agent = make_agent(client.user)
    assert post(client, agent, "k" * 255).status_code == 202
    assert post(client, agent, "a key with spaces ~!").status_code == 202


def test_a_refused_request_stores_nothing_so_its_key_can_be_used_again(make_client, make_agent):
    client = make_client("m1", max_concurrent_runs=1)
    agent = make_agent(client.user)
    assert post(client, agent, "first").status_code == 202
    refused = post(client, agent, "second")
    assert refused.status_code == 429
    assert Run.objects.filter(idempotency_key="second").count() == 0
    refused_body = post(client, agent, "third", {"input": {"message": "hi"}, "temperature": 1})
    assert refused_body.status_code == 400
    plan_set(user=client.user, tier_slug="m1", max_concurrent_runs=3)
    assert post(client, agent, "second").status_code == 202  # not a replay: a new admission
    assert post(client, agent, "third").status_code == 202


def test_a_key_is_remembered_for_24_hours(make_client, make_agent):
    client = make_client("m1")
    agent = make_agent(client.user)
    first = post(client, agent, "daily").json()["id"]
    Run.objects.filter(pk=first).update(created_at=timezone.now() - dt.timedelta(hours=23, minutes=59))
    assert post(client, agent, "daily").json()["id"] == first
    Run.objects.filter(pk=first).update(created_at=timezone.now() - dt.timedelta(hours=24, seconds=1))
    again = post(client, agent, "daily", {"input": {"message": "another day"}})
    assert again.status_code == 202 and again.json()["id"] != first


@pytest.mark.django_db(transaction=True)
# 20 here, each on a database connection of its own (the machine's PostgreSQL is shared); the 50 of
# the contract race over HTTP in tests/test_customer_controls_e2e.py.
def test_racing_requests_with_one_key_make_one_run_one_reservation_one_task(
    make_client, make_agent, monkeypatch
):
    from runs import admission

    published = []
    monkeypatch.setattr(
        admission, "publish_admitted", lambda run_id, timeout, priority=0: published.append(run_id)
    )
    client = make_client("m1")
    agent = make_agent(client.user)
    assert post(client, agent, "warm-up").status_code == 202  # the period's counter rows exist
    published.clear()
    raw = client._credentials["HTTP_AUTHORIZATION"]

    def attempt():
        from rest_framework.test import APIClient

        racer = APIClient()
        racer.credentials(HTTP_AUTHORIZATION=raw)
        response = post(racer, agent, "race")
        return response.status_code, response.json().get("id"), response.get("Idempotent-Replayed")

    outcomes = race(RACERS, attempt)
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    ids = {run_id for _, run_id, _ in outcomes}
    assert len(ids) == 1 and {code for code, _, _ in outcomes} == {202}
    assert sum(replayed == "true" for _, _, replayed in outcomes) == RACERS - 1
    assert Run.objects.filter(idempotency_key="race").count() == 1
    assert UsagePeriod.objects.get().runs_used == 2 and Throttle.objects.get().active_runs == 2
    per_run = Run.objects.get(idempotency_key="warm-up").reserved_tokens
    assert UsagePeriod.objects.get().tokens_reserved == 2 * per_run
    assert [str(run_id) for run_id in published] == [ids.pop()]  # one task
