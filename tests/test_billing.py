"""Billing arithmetic, admission against quotas, and concurrent admissions against the real database."""

from decimal import Decimal

import pytest

from billing.models import UsagePeriod
from billing.periods import period_end, period_of
from billing.pricing import PROMPT_OVERHEAD_TOKENS, billed_tokens, input_token_bound, reservation
from billing.quota import QuotaExceeded
from billing.selectors import plan_for
from routing.models import RuleEffect, TierModelRule
from runs.admission import run_create
from runs.models import Run
from runs.services import run_settle as usage_settle

from .concurrency import race


@pytest.mark.parametrize(
    "tokens, multiplier, billed",
    [
        ((62, 0), "1", 62),
        ((32, 30), "3", 186),
        ((32, 30), "15", 930),
        ((1000, 1000), "0", 0),
        ((1, 0), "0.5", 1),
        ((3, 0), "0.5", 2),
        ((10, 0), "0.3333", 4),
        ((7, 3), "1.25", 13),
        ((0, 0), "15", 0),
        ((10**9, 10**9), "15", 30 * 10**9),
    ],
)
def test_billed_tokens_is_ceil_of_tokens_times_multiplier(tokens, multiplier, billed):
    assert billed_tokens(*tokens, Decimal(multiplier)) == billed
    assert isinstance(billed_tokens(*tokens, Decimal(multiplier)), int)


def test_input_bound_counts_utf8_bytes():
    assert input_token_bound("ab", "héllo") == 2 + 6 + PROMPT_OVERHEAD_TOKENS
    assert reservation(100, 50, Decimal("3")) == 450


def test_periods_are_utc_months():
    import datetime as dt

    late = dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert period_of(late) == dt.date(2026, 12, 1)
    assert period_end(period_of(late)) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    east = dt.datetime(2027, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))  # 22:30 UTC on Dec 31
    assert period_of(east) == dt.date(2026, 12, 1)


def admit(user, agent, model=None, max_tokens=100):
    return run_create(
        user=user,
        plan=plan_for(user),
        agent=agent,
        input={"message": "hello"},
        model=model,
        timeout_secs=60,
        max_tokens=max_tokens,
    )


@pytest.mark.django_db
def test_reservation_is_the_worst_case_at_the_multiplier(make_user, make_agent):
    user = make_user("m10")
    agent = make_agent(user, system_prompt="be brief")
    run = admit(user, agent, "claude-opus-4-6", max_tokens=100)
    assert run.reserved_tokens == (len("be brief") + len("hello") + PROMPT_OVERHEAD_TOKENS + 100) * 15
    row = UsagePeriod.objects.get(user=user)
    assert (row.tokens_reserved, row.runs_used, row.tokens_used) == (run.reserved_tokens, 1, 0)


@pytest.mark.django_db
def test_access_tier_runs_local_models_at_a_zero_token_limit(make_user, make_agent):
    user = make_user("access")
    agent = make_agent(user)
    run = admit(user, agent)
    assert (run.model, run.reserved_tokens) == ("ollama/llama3.2", 0)
    TierModelRule.objects.create(tier_id="access", model_id="claude-haiku-4-5", effect=RuleEffect.ALLOW)
    with pytest.raises(QuotaExceeded) as exc:
        admit(user, agent, "claude-haiku-4-5")
    assert (exc.value.quota, exc.value.limit) == ("tokens", 0)


@pytest.mark.django_db
def test_internal_skips_quotas_even_with_overrides_and_unlimited_reports_null(
    make_user, make_agent, make_client
):
    internal = make_user("internal", token_quota=0, run_quota=0)
    agent = make_agent(internal)
    for _ in range(3):
        admit(internal, agent, "claude-opus-4-6")
    assert UsagePeriod.objects.get(user=internal).runs_used == 3
    client = make_client("enterprise")
    usage = client.get("/api/v1/usage").json()
    assert usage["tokens"]["limit"] is None and usage["tokens"]["remaining"] is None
    assert usage["runs"]["limit"] is None and usage["runs"]["remaining"] is None


# Outside a test transaction, as in production: inside one, the statement takes a savepoint.
@pytest.mark.django_db(transaction=True)
def test_an_admission_is_one_statement_once_the_period_has_its_counter_row(make_user, make_agent):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    user = make_user("m1", run_quota=3)
    agent = make_agent(user)
    with CaptureQueriesContext(connection) as first:  # the period's first run makes the row, the general way
        admit(user, agent, "claude-haiku-4-5")
    with CaptureQueriesContext(connection) as second:
        run = admit(user, agent, "claude-haiku-4-5")
    assert len(first) > 1
    statements = [
        q["sql"] for q in second if "routing_rulesrevision" not in q["sql"]
    ]  # the snapshot's freshness check
    assert [sql.split(" ", 1)[0] for sql in statements] == ["WITH"], statements
    stored = Run.objects.get(pk=run.pk)  # the INSERT ... SELECT wrote what the instance holds
    for field in Run._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(run, field.attname), field.name
    admit(user, agent, "claude-haiku-4-5")
    with pytest.raises(QuotaExceeded) as refused:  # refused by the statement, told by the general way
        admit(user, agent, "claude-haiku-4-5")
    assert (refused.value.quota, refused.value.used, refused.value.limit) == ("runs", 3, 3)
    row = UsagePeriod.objects.get(user=user)
    assert (Run.objects.filter(user=user).count(), row.runs_used, row.tokens_reserved) == (
        3,
        3,
        3 * run.reserved_tokens,
    )


@pytest.mark.django_db
def test_settlement_replaces_the_reservation_by_the_actual_figure(make_user, make_agent):
    user = make_user("m5")
    run = admit(user, make_agent(user), "claude-sonnet-4-6")
    Run.objects.filter(pk=run.pk).update(status="completed", input_tokens=40, output_tokens=2)
    assert usage_settle(run.pk) is True
    assert usage_settle(run.pk) is False
    row = UsagePeriod.objects.get(user=user)
    assert (row.tokens_used, row.tokens_reserved) == (126, 0)


@pytest.mark.django_db
def test_a_tier_change_takes_effect_on_the_next_request(make_client, make_agent):
    from billing.plans import plan_set

    client = make_client("m1")
    agent = make_agent(client.user)
    body = {"input": {"message": "hi"}, "model": "claude-sonnet-4-6"}
    assert client.post(f"/api/v1/agents/{agent.id}/run", body, format="json").status_code == 403
    plan_set(user=client.user, tier_slug="m5")
    assert client.post(f"/api/v1/agents/{agent.id}/run", body, format="json").status_code == 202


@pytest.mark.django_db(transaction=True)
def test_30_concurrent_admissions_near_the_token_limit_never_exceed_it(make_user, make_agent):
    user = make_user("m5")
    agent = make_agent(user)
    per_run = reservation(
        input_token_bound(
            f'You are a Maschina agent named "{agent.name}". Complete the task provided.', "hello"
        ),
        100,
        Decimal(3),
    )
    limit = 10 * per_run + per_run // 2
    from billing.plans import plan_set

    plan_set(user=user, tier_slug="m5", token_quota=limit)
    outcomes = race(30, lambda: admit(user, agent, "claude-sonnet-4-6"))
    admitted = [o for o in outcomes if isinstance(o, Run)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(admitted) == 10 and len(refused) == 20
    assert all(r.quota == "tokens" for r in refused)
    row = UsagePeriod.objects.get(user=user)
    assert row.tokens_reserved == 10 * per_run <= limit
    assert row.runs_used == 10 == Run.objects.filter(user=user).count()


@pytest.mark.django_db(transaction=True)
def test_30_concurrent_admissions_near_the_run_limit_never_exceed_it(make_user, make_agent):
    user = make_user("m1", run_quota=7)
    agent = make_agent(user)
    outcomes = race(30, lambda: admit(user, agent))
    assert sum(isinstance(o, Run) for o in outcomes) == 7
    assert UsagePeriod.objects.get(user=user).runs_used == 7 == Run.objects.filter(user=user).count()
