import datetime as dt
import io
import logging

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing.models import ModelUsage, UsageDay, UsagePeriod
from maschina import metrics
from runs.models import Run
from runs.services import run_settle
from runs.tasks import execute_run

from .emulators import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture
def settled_runs(make_client, make_agent, providers):
    client = make_client("m5")
    agent = make_agent(client.user)
    for model in ["claude-haiku-4-5", "claude-sonnet-4-6", "ollama/mistral"]:
        run_id = client.post(
            f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}, "model": model}, format="json"
        ).json()["id"]
        execute_run(run_id)
    queued = client.post(
        f"/api/v1/agents/{agent.id}/run", {"input": {"message": "later"}}, format="json"
    ).json()["id"]
    return client.user, queued


def run_audit(*args):
    out = io.StringIO()
    try:
        call_command("billing_audit", *args, stdout=out)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue()


def test_audit_passes_on_a_consistent_database(settled_runs):
    code, out = run_audit()
    assert code == 0, out
    assert "runs=4 terminal=3 ledger_rows=3 billed_tokens=248" in out
    assert "billing audit OK" in out


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (
            lambda user: UsagePeriod.objects.filter(user=user).update(tokens_used=1),
            "counters used/runs/reserved",
        ),
        (
            lambda user: UsagePeriod.objects.filter(user=user).update(tokens_reserved=0),
            "counters used/runs/reserved",
        ),
        (
            lambda user: ModelUsage.objects.filter(user=user, model="claude-haiku-4-5").update(
                billed_tokens=99
            ),
            "by_model",
        ),
        (
            lambda user: Run.objects.filter(user=user, model="claude-sonnet-4-6").update(billed_tokens=1),
            "billed 1",
        ),
        (
            lambda user: Run.objects.filter(user=user, model="claude-haiku-4-5").update(
                settled_at=None, finished_at=timezone.now() - dt.timedelta(hours=1)
            ),
            "still hold a reservation",
        ),
        (
            lambda user: UsageDay.objects.filter(user=user, model="claude-haiku-4-5").update(runs=5),
            "usage lines billed/runs",
        ),
        (
            lambda user: UsageDay.objects.filter(user=user, model="claude-sonnet-4-6").update(
                billed_tokens=0
            ),
            "usage lines billed/runs",
        ),
    ],
)
def test_audit_finds_each_kind_of_mismatch(settled_runs, corrupt, expected):
    user, _ = settled_runs
    corrupt(user)
    code, out = run_audit()
    assert code == 1
    assert expected in out and "billing audit FAILED" in out


def test_audit_of_one_period(settled_runs):
    code, out = run_audit("--period", "1999-01")
    assert code == 0 and "runs=0" in out


@pytest.mark.django_db(transaction=True)
def test_audit_reads_one_snapshot_while_settlements_commit(make_client, make_agent, providers, monkeypatch):
    """A settlement committing between two of the audit's reads must not look like a mismatch."""
    import threading

    from django.db import connection

    from runs import audit as audit_module

    client = make_client("m5")
    agent = make_agent(client.user)
    run_id = client.post(
        f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}}, format="json"
    ).json()["id"]
    original = audit_module.LedgerEntry.objects.all

    def ledger_then_settle():
        ledger = original()
        list(ledger)  # the audit's first read happens without the run's ledger row...

        def settle():
            try:
                execute_run(run_id)  # ...then the run settles, in another connection
            finally:
                connection.close()

        thread = threading.Thread(target=settle)
        thread.start()
        thread.join(30)
        return ledger

    monkeypatch.setattr(audit_module.LedgerEntry.objects, "all", ledger_then_settle)
    summary, problems = audit_module.audit()
    assert problems == []
    assert summary["ledger_rows"] == 0  # the snapshot from before the settlement, consistently
    monkeypatch.undo()
    assert audit_module.audit()[0]["ledger_rows"] == 1


def test_over_reservation_is_listed_by_the_audit_and_logged_at_settlement(
    make_client, make_agent, providers, anthropic_emulator, caplog
):
    """A provider reporting far more input than the reservation's bound: the run is billed what was
    reported, a WARNING names it at settlement, and billing_audit lists it and fails."""
    client = make_client("m1")
    agent = make_agent(client.user)
    anthropic_emulator.queue("claude-haiku-4-5", Reply(usage={"input_tokens": 50_000}))
    run_id = client.post(
        f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}}, format="json"
    ).json()["id"]
    counted = metrics.RUNS_OVER_RESERVATION._value.get()
    with caplog.at_level(logging.WARNING, logger="billing.settlement"):
        execute_run(run_id)
    run = Run.objects.get(pk=run_id)
    assert run.status == "completed" and run.billed_tokens > run.reserved_tokens
    assert metrics.RUNS_OVER_RESERVATION._value.get() == counted + 1  # /metrics counts it too
    warnings = [r for r in caplog.records if r.name == "billing.settlement"]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert f"run {run_id} billed {run.billed_tokens} tokens above its reservation" in warnings[0].getMessage()

    code, out = run_audit()
    assert code == 1, out
    assert (
        f"MISMATCH run {run_id} billed {run.billed_tokens} tokens above its reservation "
        f"of {run.reserved_tokens}"
    ) in out


def test_over_reservation_on_the_general_settlement_path(make_client, make_agent, providers, caplog):
    """The same warning where a run is settled by run_settle (a cancel, the sweeper)."""
    client = make_client("m1")
    agent = make_agent(client.user)
    run_id = client.post(
        f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}}, format="json"
    ).json()["id"]
    run = Run.objects.get(pk=run_id)
    Run.objects.filter(pk=run_id).update(
        status="failed", finished_at=timezone.now(), input_tokens=run.reserved_tokens, output_tokens=1
    )
    with caplog.at_level(logging.WARNING, logger="billing.settlement"):
        assert run_settle(run_id)
    assert [r.levelno for r in caplog.records if r.name == "billing.settlement"] == [logging.WARNING]
    assert run_audit()[0] == 1
