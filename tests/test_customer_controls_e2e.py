"""Customer controls against real processes: gunicorn web processes, a Celery worker on its own
Redis, the provider emulators. A concurrency slot comes back however a run ends (completed, failed,
timed out, canceled while queued or executing, reaped by the sweeper); a revoked key is refused by a
second web process within a second; racing retries with one Idempotency-Key make one run and one
provider call."""

import datetime as dt
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.utils import timezone

from accounts.services import api_key_create
from billing.models import KeyUsage, Throttle, UsagePeriod
from billing.selectors import plan_for
from runs.admission import run_create
from runs.models import Run
from runs.services import run_claim
from runs.sweeper import sweep

from .emulators import Reply, anthropic_error
from .processes import Api, stack_env, start_gunicorn, start_worker, wait_for, wait_http, wait_worker_ready

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def active_runs(user) -> int:
    return Throttle.objects.filter(user=user).values_list("active_runs", flat=True).first() or 0


@pytest.fixture
def stack(cluster):
    """gunicorn (2 workers) and a worker on the cluster's broker and the test database."""
    env, log_dir = cluster["env"], cluster["log_dir"]
    web, url = start_gunicorn(env, log_dir, workers=2)
    worker = start_worker(env, log_dir, concurrency=4)
    cluster["processes"] += [web, worker]
    wait_http(url + "/healthz", [web, worker])
    wait_worker_ready(worker)
    return url, worker


def test_a_slot_comes_back_however_the_run_ends(stack, make_user, make_agent, anthropic_emulator):
    url, worker = stack
    user = make_user("m1", max_concurrent_runs=1)
    agent = make_agent(user)
    key, raw = api_key_create(user=user)
    api = Api(url, raw)

    def start(**body):
        response = api.post(f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}, **body})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def ends(run_id, status):
        wait_for(lambda: Run.objects.get(pk=run_id).status == status, 20, f"{run_id} {status}")
        wait_for(lambda: active_runs(user) == 0, 10, f"the slot of the {status} run")
        assert Run.objects.get(pk=run_id).settled_at is not None

    ends(start(), "completed")

    anthropic_emulator.queue("claude-haiku-4-5", anthropic_error(400, "invalid_request_error"))
    ends(start(), "failed")

    anthropic_emulator.queue("claude-haiku-4-5", Reply(delay=4))
    ends(start(timeout_secs=1), "timed_out")

    anthropic_emulator.queue("claude-haiku-4-5", Reply(delay=5))
    calls = len(anthropic_emulator.calls)
    executing = start()
    wait_for(lambda: len(anthropic_emulator.calls) > calls, 10, "the provider call")
    refused = api.post(f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}})
    assert refused.status_code == 429 and refused.json()["error"]["scope"] == "concurrency"
    assert api.post(f"/api/v1/runs/{executing}/cancel").json()["status"] == "canceled"
    ends(executing, "canceled")  # settled by its worker, which noticed the cancel

    # queued, canceled before any worker saw it (admitted here, so its task went nowhere)
    queued = run_create(
        user=user, plan=plan_for(user), agent=agent, input={"message": "hi"}, model=None,
        timeout_secs=60, max_tokens=64,
    )  # fmt: skip
    assert active_runs(user) == 1
    assert api.post(f"/api/v1/runs/{queued.pk}/cancel").json()["status"] == "canceled"
    ends(queued.pk, "canceled")

    # executing, its worker gone (claimed here, never run): reaped by the sweeper past its deadline
    stuck = run_create(
        user=user, plan=plan_for(user), agent=agent, input={"message": "hi"}, model=None,
        timeout_secs=1, max_tokens=64,
    )  # fmt: skip
    assert run_claim(stuck.pk) is not None
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    Run.objects.filter(pk=stuck.pk).update(deadline_at=long_ago, heartbeat_at=long_ago)
    assert sweep()["reaped"] == 1
    ends(stuck.pk, "timed_out")

    usage = UsagePeriod.objects.get(user=user)
    assert usage.tokens_reserved == 0
    # the key's month was settled with the user's, in the same statements (the sweeper's and the
    # queued cancel's runs were admitted without a key)
    key_usage = KeyUsage.objects.get(key=key)
    assert (key_usage.runs, key_usage.tokens_reserved) == (4, 0)
    assert key_usage.tokens_used == usage.tokens_used > 0
    assert start()  # and the slot admits the next run


def test_a_revoked_key_is_refused_by_another_web_process_within_a_second(cluster, make_user):
    env = stack_env(broker_url="memory://")
    log_dir = tempfile.mkdtemp(prefix="maschina-revoke-")
    processes = [start_gunicorn(env, log_dir, workers=1) for _ in range(2)]
    cluster["processes"] += [web for web, _ in processes]
    user = make_user("m1")
    _, admin_raw = api_key_create(user=user, name="admin")
    for web, url in processes:
        wait_http(url + "/healthz", [web])
    (_, url_a), (_, url_b) = processes
    created = Api(url_a, admin_raw).post("/api/v1/keys", {"name": "leaked"}).json()
    leaked = Api(url_b, created["key"])
    assert leaked.get("/api/v1/keys").status_code == 200  # process B has seen the key in use
    assert Api(url_a, admin_raw).session.delete(f"{url_a}/api/v1/keys/{created['id']}").status_code == 204
    revoked_at = time.monotonic()
    while (response := leaked.get("/api/v1/keys")).status_code != 401:
        assert time.monotonic() - revoked_at < 1, "process B still accepts the revoked key"
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert time.monotonic() - revoked_at < 1


def test_racing_retries_with_one_idempotency_key_make_one_run_and_one_call(
    stack, make_user, make_agent, anthropic_emulator
):
    url, worker = stack
    user = make_user("m1")
    agent = make_agent(user)
    _, raw = api_key_create(user=user)
    anthropic_emulator.queue("claude-haiku-4-5", Reply(delay=1))
    body = {"input": {"message": "pay once"}}

    def attempt(_):
        response = Api(url, raw).post(
            f"/api/v1/agents/{agent.id}/run", body, headers={"Idempotency-Key": "invoice-42"}
        )
        return response.status_code, response.json().get("id"), response.headers.get("Idempotent-Replayed")

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert {code for code, _, _ in outcomes} <= {200, 202}, outcomes
    (run_id,) = {run_id for _, run_id, _ in outcomes}
    assert sum(replayed == "true" for *_, replayed in outcomes) == 49
    wait_for(lambda: Run.objects.get(pk=run_id).status == "completed", 20, "the run")
    time.sleep(1)  # a duplicate task, if there were one, would have called by now
    assert len(anthropic_emulator.calls_for("claude-haiku-4-5")) == 1
    assert Run.objects.filter(user=user).count() == 1
    usage = UsagePeriod.objects.get(user=user)
    assert (usage.runs_used, usage.tokens_reserved) == (1, 0)
