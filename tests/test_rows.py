"""maschina.db.rows and accounts.key_lookup: statements compiled once per process read and write what
the ORM does."""

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Subquery
from django.test.utils import CaptureQueriesContext

from accounts.key_lookup import active_key
from accounts.models import KEY_PREFIX, LOOKUP_LEN, ApiKey
from accounts.services import api_key_create, api_key_revoke
from billing.plans import plan_set
from billing.selectors import plan_for
from routing.models import RulesRevision, Tier


def lookup_of(raw):
    return raw[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_LEN]


def orm_key(lookup):
    revision = Subquery(RulesRevision.objects.filter(pk=1).values("value")[:1])
    keys = ApiKey.objects.select_related("user", "user__plan").annotate(rules_revision=revision)
    return keys.get(lookup=lookup, revoked_at__isnull=True, user__is_active=True)


def values(instance):
    return {field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields}


@pytest.mark.django_db
def test_the_key_its_user_and_plan_are_what_the_orm_loads(make_user):
    user = make_user("m5", token_quota=123_456)
    plan_set(user=user, tier_slug="m5")
    user.plan.alert_webhook_url = "https://hooks.example/alerts"
    user.plan.save()
    key, raw = api_key_create(user=user, name="ci")
    Tier.objects.filter(slug="m1").update(max_tokens=4096)  # moves the rules revision

    found, revision = active_key(lookup_of(raw))
    assert found.last_used_at is None  # read before this lookup stamped it
    found.last_used_at = ApiKey.objects.get(pk=key.pk).last_used_at
    assert found.last_used_at is not None
    expected = orm_key(lookup_of(raw))

    assert values(found) == values(expected)
    assert values(found.user) == values(expected.user)
    assert values(found.user.plan) == values(expected.user.plan)
    assert found.user.plan.token_quota_override == 123_456 and found.user.plan.updated_at.tzinfo is not None
    assert revision == expected.rules_revision > 0
    with CaptureQueriesContext(connection) as queries:  # all of it was loaded by the one query
        assert (
            plan_for(found.user).tier_id == "m5"
            and found.user_id == user.pk
            and found.user.plan.user is found.user
        )
    assert len(queries) == 0


@pytest.mark.django_db
def test_a_user_without_a_plan_gets_the_default_without_a_query():
    user = get_user_model().objects.create(username="root", is_staff=True)
    _, raw = api_key_create(user=user)
    found, _ = active_key(lookup_of(raw))
    with CaptureQueriesContext(connection) as queries:
        assert plan_for(found.user).tier_id == "access"
    assert len(queries) == 0


@pytest.mark.django_db
def test_revoked_keys_inactive_users_and_unknown_lookups_find_nothing(make_user):
    revoked, raw_revoked = api_key_create(user=make_user())
    api_key_revoke(key=revoked)
    inactive = make_user()
    _, raw_inactive = api_key_create(user=inactive)
    get_user_model().objects.filter(pk=inactive.pk).update(is_active=False)
    for lookup in (lookup_of(raw_revoked), lookup_of(raw_inactive), "x" * LOOKUP_LEN):
        assert active_key(lookup) == (None, 0)


SQLITE_CHECK = """
import datetime as dt
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model
from accounts.key_lookup import active_key
from accounts.services import api_key_create
from billing.plans import plan_set
user = get_user_model().objects.create(username="u")
plan_set(user=user, tier_slug="m5", token_quota=7)
_, raw = api_key_create(user=user)
key, revision = active_key(raw[9:21])
assert isinstance(key.created_at, dt.datetime) and key.created_at.tzinfo is not None, repr(key.created_at)
assert key.user.is_active is True and key.user.is_staff is False, (key.user.is_active, key.user.is_staff)
assert isinstance(key.user.plan.updated_at, dt.datetime), repr(key.user.plan.updated_at)
assert (key.user.plan.tier_id, key.user.plan.token_quota_override) == ("m5", 7)
print("ok")
"""


def test_on_sqlite_every_value_is_converted_as_the_orm_converts_it(tmp_path):
    """SQLite returns datetimes as text and booleans as integers: the field converters must apply."""
    import subprocess
    import sys

    from .processes import base_env

    env = base_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
        CELERY_BROKER_URL="memory://",
        DJANGO_SETTINGS_MODULE="maschina.settings",
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + SQLITE_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.django_db
def test_rows_insert_and_get_write_and_read_what_the_orm_does(make_user, make_agent):
    from django.db import connection

    from maschina.db.rows import rows_of
    from runs.models import Run

    user = make_user()
    agent = make_agent(user)
    fields = {
        "user": user,
        "agent": agent,
        "tier": "m1",
        "requested_model": None,
        "model": "claude-haiku-4-5",
        "catalog_model": "claude-haiku-4-5",
        "provider": "anthropic",
        "multiplier": Decimal("1.5"),
        "system_prompt": "s",
        "input": {"message": "é ☃", "extra": [1, None, {"deep": True}]},
        "timeout_secs": 60,
        "max_tokens": 10,
        "period": dt.date(2026, 11, 1),
        "reserved_tokens": 99,
    }
    fast, slow = Run(**fields), Run.objects.create(**fields)
    with connection.cursor() as cursor:
        cursor.execute(*rows_of(Run).insert_sql(fast, source="(SELECT 1) AS one"))
    read = rows_of(Run).get(id=fast.pk, user=user.pk)
    orm = Run.objects.get(pk=fast.pk)
    assert {f.attname: getattr(read, f.attname) for f in Run._meta.concrete_fields} == {
        f.attname: getattr(orm, f.attname) for f in Run._meta.concrete_fields
    }
    assert orm.input == fields["input"] and orm.multiplier == Decimal("1.5")
    assert rows_of(Run).get(id=slow.pk, user=make_user().pk) is None  # another user's run


@pytest.mark.django_db
def test_the_completing_statement_matches_nulls_and_values(make_user, make_agent):
    import uuid

    from providers import Completion
    from runs.models import Run
    from runs.services import run_complete

    user = make_user()
    run = Run.objects.create(
        user=user,
        agent=make_agent(user),
        tier="m1",
        model="m",
        catalog_model="m",
        provider="anthropic",
        multiplier=Decimal("3"),
        system_prompt="s",
        input={"message": "x"},
        timeout_secs=60,
        max_tokens=10,
        period=dt.date(2026, 11, 1),
        reserved_tokens=1,
        status="executing",
    )
    token = uuid.uuid4()
    Run.objects.filter(pk=run.pk).update(claim=token)
    answer = Completion(text="yes", input_tokens=7, output_tokens=0)
    assert run_complete(run, uuid.uuid4(), answer) is None  # another claim's
    Run.objects.filter(pk=run.pk).update(input_tokens=5)
    assert run_complete(run, token, answer) is None  # an answer is recorded already
    Run.objects.filter(pk=run.pk).update(input_tokens=None)
    run.multiplier = Decimal("3.0000")  # equal as a number, as the database compares it
    assert run_complete(run, token, answer) is not None
    run.refresh_from_db()
    assert (run.output, run.input_tokens, run.billed_tokens) == ({"text": "yes"}, 7, 21)
