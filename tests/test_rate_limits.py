"""Rate and concurrency limits (CONTRACT section 11), the key's token limit under concurrency
(section 10), the order of the refusals, and the refusals' wording. Every refusal here is checked
to leave nothing behind: no run, no reservation, no counter moved."""

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.services import api_key_create
from audit.models import ChangeRecord
from billing.models import KeyUsage, Plan, Throttle, UsagePeriod
from billing.plans import UNLIMITED, plan_set
from billing.pricing import input_token_bound, reservation
from billing.quota import QuotaExceeded
from billing.selectors import plan_for
from billing.throttle import RateLimited
from routing.models import TierModelRule
from runs.admission import run_create
from runs.models import Run

from .test_keys import client_for, new_key, run

pytestmark = pytest.mark.django_db


def state(user):
    """Everything a refused run must leave as it was."""
    usage = UsagePeriod.objects.filter(user=user).values_list("tokens_reserved", "runs_used").first()
    throttle = (
        Throttle.objects.filter(user=user).values_list("active_runs", "bucket_used", "bucket_at").first()
    )
    keys = sorted(KeyUsage.objects.filter(user=user).values_list("key_id", "runs", "tokens_reserved"))
    return Run.objects.filter(user=user).count(), usage, throttle, keys


def refused_with(response, code, **extra):
    assert response.status_code in (403, 429), response.json()
    error = response.json()["error"]
    assert error["code"] == code, error
    for name, value in extra.items():
        assert error[name] == value, (name, error)
    return error


def test_max_concurrent_runs_refuses_the_next_and_a_settled_run_frees_its_slot(make_client, make_agent):
    from runs.services import run_cancel

    client = make_client("m1", max_concurrent_runs=2)
    agent = make_agent(client.user)
    first, second = run(client, agent), run(client, agent)  # the general way, then the one statement
    assert first.status_code == second.status_code == 202
    before = state(client.user)
    refused = run(client, agent)
    assert refused.status_code == 429
    refused_with(refused, "rate_limited", scope="concurrency", limit=2)
    assert int(refused["Retry-After"]) >= 1
    assert state(client.user) == before
    run_cancel(run=Run.objects.get(pk=first.json()["id"]))  # a queued run canceled: settled at once
    assert Throttle.objects.get(user=client.user).active_runs == 1
    assert run(client, agent).status_code == 202


def test_requests_per_minute_is_a_bucket_with_the_headers_on_every_answer(make_client, make_agent):
    client = make_client("m1", requests_per_minute=3)
    agent = make_agent(client.user)
    answers = [run(client, agent) for _ in range(3)]
    assert [a.status_code for a in answers] == [202] * 3
    assert [a["X-RateLimit-Limit"] for a in answers] == ["3"] * 3
    assert [a["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    assert [a["X-RateLimit-Reset"] for a in answers[:2]] == ["0", "0"]
    assert 1 <= int(answers[2]["X-RateLimit-Reset"]) <= 20  # one run back every 20 s
    before = state(client.user)
    refused = run(client, agent)
    refused_with(refused, "rate_limited", scope="minute", limit=3)
    assert 1 <= int(refused["Retry-After"]) <= 20
    assert refused["X-RateLimit-Remaining"] == "0" and refused["X-RateLimit-Limit"] == "3"
    assert state(client.user) == before
    # 20 s later one run is back (and only one)
    Throttle.objects.filter(user=client.user).update(bucket_at=timezone.now() - dt.timedelta(seconds=20.5))
    again = run(client, agent)
    assert again.status_code == 202 and again["X-RateLimit-Remaining"] == "0"
    refused_with(run(client, agent), "rate_limited", scope="minute")
    # no minute limit, no headers
    plan_set(user=client.user, tier_slug="m1", requests_per_minute=UNLIMITED)
    assert "X-RateLimit-Limit" not in run(client, agent)


def test_the_seeded_tier_limits_apply_without_overrides(make_client, make_agent):
    client = make_client("access", requests_per_minute=None, max_concurrent_runs=None)  # access: 10, 2
    agent = make_agent(client.user)
    answers = [run(client, agent) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[0]["X-RateLimit-Limit"] == "10"
    refused_with(answers[2], "rate_limited", scope="concurrency", limit=2)


def test_refusals_come_in_the_contracts_order(make_client, make_agent):
    client = make_client("m1", max_concurrent_runs=1, requests_per_minute=1, run_quota=1)
    agent = make_agent(client.user)
    assert run(client, agent).status_code == 202
    restricted = client_for(new_key(client, models=["claude-haiku-4-5"], monthly_token_limit=0)["key"])
    # the key's model list with the model gate, before any limit
    refused_with(run(restricted, agent, model="ollama/llama3.2"), "key_model_not_allowed")
    # then concurrency, then the minute, then the user's quota, then the key's
    refused_with(run(restricted, agent), "rate_limited", scope="concurrency")
    plan_set(user=client.user, tier_slug="m1", max_concurrent_runs=UNLIMITED)
    refused_with(run(restricted, agent), "rate_limited", scope="minute")
    plan_set(user=client.user, tier_slug="m1", requests_per_minute=None)  # the tier's 60
    refused_with(run(restricted, agent), "quota_exceeded", quota="runs")
    plan_set(user=client.user, tier_slug="m1", run_quota=None)
    refused_with(run(restricted, agent), "quota_exceeded", quota="key_tokens", limit=0)


def test_set_tier_sets_and_removes_the_rate_limit_overrides_audited(make_user):
    user = make_user("m5")
    call_command(
        "set_tier", user.username, "m5", "--requests-per-minute", "7", "--max-concurrent-runs", "unlimited"
    )
    plan = Plan.objects.get(user=user)
    assert (plan.requests_per_minute_override, plan.requests_per_minute_unlimited) == (7, False)
    assert (plan.max_concurrent_runs_override, plan.max_concurrent_runs_unlimited) == (None, True)
    limits = __import__("billing.plans", fromlist=["limits_for"]).limits_for(
        plan, __import__("routing.snapshot", fromlist=["get_rules"]).get_rules().tiers["m5"]
    )
    assert (limits.per_minute, limits.concurrent) == (7, None)
    call_command(
        "set_tier", user.username, "m5", "--requests-per-minute", "none", "--max-concurrent-runs", "none"
    )
    plan.refresh_from_db()
    assert plan.requests_per_minute_override is None and not plan.max_concurrent_runs_unlimited
    records = ChangeRecord.objects.filter(object_type="billing.plan", object_id=str(plan.pk), action="update")
    assert any((r.after or {}).get("requests_per_minute_override") == 7 for r in records)
    from django.core.management.base import CommandError

    for bad in ("-1", "many", "1.5"):
        with pytest.raises(CommandError):
            call_command("set_tier", user.username, "m5", "--max-concurrent-runs", bad)


def test_a_reservation_bigger_than_the_room_says_so_and_the_max_tokens_that_fits(make_client, make_agent):
    client = make_client("m1", token_quota=1000)
    agent = make_agent(client.user)
    refused = run(client, agent)  # max_tokens 4096 by default: 4 096 + the input, far above 1 000
    error = refused_with(refused, "quota_exceeded", quota="tokens", used=0, reserved=0, limit=1000)
    assert error["requested"] > 4096
    assert f"reserves up to {error['requested']} tokens" in error["message"]
    assert "used up" not in error["message"]
    fit = int(error["message"].split("a max_tokens of ")[1].split(" ")[0])
    assert refused_with(run(client, agent, max_tokens=fit + 1), "quota_exceeded")
    assert run(client, agent, max_tokens=fit).status_code == 202  # the hint is exact
    assert UsagePeriod.objects.get(user=client.user).tokens_reserved == 1000
    used_up = refused_with(run(client, agent, max_tokens=1), "quota_exceeded", quota="tokens")
    assert used_up["message"] == "The monthly tokens quota of your plan is used up."


def test_a_rule_that_denies_a_model_on_a_tier_that_ranks_high_enough_says_the_plan_leaves_it_out(
    make_client, make_agent
):
    TierModelRule.objects.create(tier_id="m5", model_id="claude-sonnet-4-5", effect="deny")
    client = make_client("m5")
    error = refused_with(run(client, make_agent(client.user), model="claude-sonnet-4-5"), "model_not_allowed")
    assert error["message"] == "Model Claude Sonnet 4.5 is not included in the m5 plan."
    low = make_client("m1")
    below = refused_with(run(low, make_agent(low.user), model="claude-sonnet-4-5"), "model_not_allowed")
    assert below["message"] == "Model Claude Sonnet 4.5 requires the m5 plan or higher."


def test_unknown_run_body_fields_are_refused(make_client, make_agent):
    client = make_client("m1")
    agent = make_agent(client.user)
    response = run(client, agent, temperature=0.2, messages=[{"role": "user", "content": "x"}])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and set(error["fields"]) == {"temperature", "messages"}
    assert not Run.objects.exists() and not UsagePeriod.objects.exists()


# --- under concurrency: 200 admissions, 20 database connections ------------------------------------

ADMISSIONS, CONNECTIONS = 200, 20  # the machine's PostgreSQL is shared: at most 20 connections


def admit_many(target) -> list:
    """ADMISSIONS calls of `target`, from CONNECTIONS threads released together."""
    from django.db import connection

    barrier, outcomes, lock = threading.Barrier(CONNECTIONS), [], threading.Lock()

    def worker():
        try:
            barrier.wait()
            for _ in range(ADMISSIONS // CONNECTIONS):
                try:
                    outcome = target()
                except Exception as exc:
                    outcome = exc
                with lock:
                    outcomes.append(outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(outcomes) == ADMISSIONS
    return outcomes


def admit(user, agent, key=None):
    return run_create(
        user=user,
        plan=plan_for(user),
        agent=agent,
        key=key,
        input={"message": "hello"},
        model="claude-haiku-4-5",
        timeout_secs=60,
        max_tokens=100,
    )


@pytest.mark.django_db(transaction=True)
def test_200_concurrent_admissions_never_pass_max_concurrent_runs(make_user, make_agent):
    user = make_user("m1", max_concurrent_runs=37)
    agent = make_agent(user)
    admit(user, agent)  # the period's counter row exists: the rest race the one statement
    outcomes = admit_many(lambda: admit(user, agent))
    admitted = [o for o in outcomes if isinstance(o, Run)]
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert len(admitted) == 36 and len(refused) == 164, {type(o) for o in outcomes}
    assert all(r.scope == "concurrency" and r.limit == 37 for r in refused)
    assert Throttle.objects.get(user=user).active_runs == 37 == Run.objects.filter(user=user).count()
    assert UsagePeriod.objects.get(user=user).runs_used == 37


@pytest.mark.django_db(transaction=True)
def test_200_concurrent_admissions_never_pass_a_keys_monthly_token_limit(make_user, make_agent):
    user = make_user("m1")
    agent = make_agent(user)
    prompt = f'You are a Maschina agent named "{agent.name}". Complete the task provided.'
    per_run = reservation(input_token_bound(prompt, "hello"), 100, Decimal(1))
    key, _ = api_key_create(user=user, name="capped", monthly_token_limit=23 * per_run + per_run // 2)
    outcomes = admit_many(lambda: admit(user, agent, key))
    admitted = [o for o in outcomes if isinstance(o, Run)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(admitted) == 23 and len(refused) == 177, {type(o) for o in outcomes}
    assert all(r.quota == "key_tokens" for r in refused)
    key_usage = KeyUsage.objects.get(key=key)
    assert (key_usage.runs, key_usage.tokens_reserved) == (23, 23 * per_run)
    usage = UsagePeriod.objects.get(user=user)  # both rows or neither
    assert (usage.runs_used, usage.tokens_reserved) == (23, 23 * per_run)
    assert Throttle.objects.get(user=user).active_runs == 23 == Run.objects.filter(user=user).count()


@pytest.mark.django_db(transaction=True)
def test_200_concurrent_admissions_never_pass_requests_per_minute(make_user, make_agent):
    user = make_user("m1", requests_per_minute=50)
    agent = make_agent(user)
    outcomes = admit_many(lambda: admit(user, agent))
    admitted = [o for o in outcomes if isinstance(o, Run)]
    # the bucket refills by under one run while 200 admissions race (50 a minute: one per 1.2 s)
    assert 50 <= len(admitted) <= 52, len(admitted)
    assert all(isinstance(o, RateLimited) and o.scope == "minute" for o in outcomes if o not in admitted)
    assert (
        Run.objects.filter(user=user).count() == len(admitted) == UsagePeriod.objects.get(user=user).runs_used
    )
