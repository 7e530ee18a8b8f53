"""The hand-written statements (each app's statements.py) as PostgreSQL runs them, against golden
files under tests/golden_sql/: a change to a statement, or to a model that one is built from, shows
up here as a diff to review. UPDATE_GOLDEN_SQL=1 rewrites the files.

Also what the hand-written INSERT relies on: the models it writes have no save() and no signals of
their own, which that INSERT would skip."""

import os
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import signals

from accounts import statements as accounts_statements
from billing import statements as billing_statements
from maschina.db.rows import rows_of
from runs import statements as runs_statements
from runs.models import Run

GOLDEN = Path(__file__).parent / "golden_sql"
# Models whose rows the product inserts by hand (maschina.db.rows.ModelRows.insert_sql).
INSERTED_BY_HAND = (Run,)


def rendered() -> dict[str, str]:
    run = Run(
        user_id=1,
        tier="m1",
        model="m",
        catalog_model="m",
        provider="anthropic",
        multiplier=Decimal(1),
        system_prompt="",
        input={"message": "x"},
        timeout_secs=60,
        max_tokens=1,
        period="2026-11-01",
        reserved_tokens=1,
    )
    return {
        "accounts_active_key": accounts_statements.active_key("postgresql")[0],
        "billing_quota_reserve": billing_statements.QUOTA_RESERVE,
        "runs_admit": billing_statements.quota_reserve_inserting(
            rows_of(Run).insert_sql(run, source="reserved")[0]
        ),
        "runs_claim_queued": runs_statements.claim_queued(),
        "runs_complete": runs_statements.COMPLETE,
    }


def normalized(sql: str) -> str:
    return "\n".join(line.rstrip() for line in sql.strip().splitlines()) + "\n"


@pytest.mark.parametrize("name", sorted(rendered()))
def test_statements_match_their_golden_files(name):
    assert connection.vendor == "postgresql"
    sql = normalized(rendered()[name])
    path = GOLDEN / f"{name}.sql"
    if os.environ.get("UPDATE_GOLDEN_SQL") == "1":
        path.write_text(sql)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN_SQL=1 and review it"
    assert sql == path.read_text(), f"{name} differs from {path}: review, then UPDATE_GOLDEN_SQL=1"


def test_no_golden_file_is_left_without_its_statement():
    assert {path.stem for path in GOLDEN.glob("*.sql")} == set(rendered())


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(rendered()))
def test_statements_are_valid_postgresql(name):
    """PostgreSQL parses and plans each one against the real schema: every name in it exists."""
    sql = rendered()[name]
    params = {
        "tokens": 1,
        "user_id": 1,
        "period": "2026-11-01",
        "token_room": None,
        "runs_before": None,
        "runs_alert": None,
        "now": "2026-11-01T00:00:00Z",
        "deadline_at": "2026-11-01T00:00:00Z",
        "claim": uuid.uuid4(),
        "id": uuid.uuid4(),
        "timeout_secs": 1,
        "output": None,
        "input_tokens": 1,
        "output_tokens": 1,
        "billed_tokens": 1,
        "model": "m",
        "multiplier": 1,
        "concurrent": None,
        "per_minute": None,
        "key_id": None,
        "key_room": None,
        "day": "2026-11-01",
        "day_model": "m",
        "day_agent_id": uuid.uuid4(),
        "day_key_id": uuid.uuid4(),
    }
    if name == "runs_admit":
        params.update({f"run_{field.attname}": None for field in Run._meta.concrete_fields})
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, [""] * sql.count("%s") if "%s" in sql else params)


@pytest.mark.parametrize("model", INSERTED_BY_HAND)
def test_models_inserted_by_hand_have_no_save_or_signals(model):
    from django.db import models

    assert model.save is models.Model.save, f"{model.__name__}.save() would be skipped by its INSERT"
    for signal in (signals.pre_save, signals.post_save, signals.pre_init, signals.post_init):
        assert not signal.has_listeners(model), f"{model.__name__} has {signal} receivers its INSERT skips"


@pytest.mark.django_db
def test_psycopg_converts_the_admission_and_settlement_statements_once(
    make_user, make_agent, providers, monkeypatch
):
    """psycopg keeps a statement's conversion only under its size limits, which maschina.db raises:
    otherwise the admission's one statement is converted again on every request."""
    from psycopg import _queries

    from billing.selectors import plan_for
    from runs.admission import run_create
    from runs.tasks import execute_run

    converted_again = []
    convert = _queries._query2pg_nocache
    monkeypatch.setattr(
        _queries,
        "_query2pg_nocache",
        lambda query, encoding: converted_again.append(query) or convert(query, encoding),
    )
    user = make_user("m10")
    agent = make_agent(user)
    for _ in range(3):
        run = run_create(
            user=user, plan=plan_for(user), agent=agent, input={"message": "hi"}, model="claude-haiku-4-5",
            timeout_secs=60, max_tokens=16,
        )  # fmt: skip
        execute_run(str(run.pk))
    assert Run.objects.filter(status="completed", settled_at__isnull=False).count() == 3
    assert [len(query) for query in converted_again] == []
