"""GET /usage/history (CONTRACT section 13): lines counted at admission and settlement, summed over a
range, equal to GET /usage over a month; CSV; bad queries refused."""

import csv
import datetime as dt
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.services import api_key_create
from billing.models import UsageDay
from billing.selectors import plan_for
from runs.admission import run_create
from runs.models import Run
from runs.tasks import execute_run

from .concurrency import race
from .emulators import anthropic_error

FIGURES = ("runs", "input_tokens", "output_tokens", "billed_tokens")


def _admit_at(monkeypatch, client, agent, moment, **body):
    from runs import admission

    monkeypatch.setattr(admission.timezone, "now", lambda: moment)
    response = client.post(
        f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}, **body}, format="json"
    )
    monkeypatch.undo()
    assert response.status_code == 202, response.content
    return response.json()["id"]


def _totals(results):
    return {name: sum(row[name] for row in results) for name in FIGURES}


@pytest.mark.django_db
def test_a_months_history_in_every_grouping_sums_to_get_usage(
    make_client, make_agent, providers, monkeypatch
):
    client = make_client("m10")
    _, raw = api_key_create(user=client.user, name="second")
    other_key = APIClient()
    other_key.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    first, second = make_agent(client.user, name="first"), make_agent(client.user, name="second")
    providers[0].queue("claude-opus-4-6", *[anthropic_error(529, "overloaded_error")] * 3)  # falls back
    providers[0].queue("claude-sonnet-4-5", anthropic_error(400, "invalid_request_error"))  # fails, unbilled
    nov29 = dt.datetime(2026, 11, 29, 23, 59, 59, tzinfo=dt.UTC)
    nov30 = dt.datetime(2026, 11, 30, 0, 0, 1, tzinfo=dt.UTC)
    executed = [
        _admit_at(monkeypatch, client, first, nov29, model="claude-opus-4-6"),
        _admit_at(monkeypatch, client, first, nov29, model="claude-sonnet-4-5"),
        _admit_at(monkeypatch, other_key, second, nov30, model="claude-haiku-4-5"),
        _admit_at(monkeypatch, client, second, nov30, model="ollama/mistral"),
    ]
    for run_id in executed:
        execute_run(run_id)  # settled today, by the real clock: the lines are still the creation days
    _admit_at(monkeypatch, other_key, second, nov30, model="claude-haiku-4-5")  # left queued: admitted
    _admit_at(monkeypatch, client, first, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))  # the next month

    usage = client.get("/api/v1/usage?period=2026-11").json()
    assert usage["runs"]["used"] == 5
    assert usage["tokens"]["used"] > 0
    expected = {
        "runs": usage["runs"]["used"],
        "input_tokens": sum(line["input_tokens"] for line in usage["by_model"]),
        "output_tokens": sum(line["output_tokens"] for line in usage["by_model"]),
        "billed_tokens": usage["tokens"]["used"],
    }
    assert expected["billed_tokens"] == sum(line["billed_tokens"] for line in usage["by_model"])
    bodies = {}
    for group_by in ("day", "model", "agent", "key"):
        response = client.get(f"/api/v1/usage/history?from=2026-11-01&to=2026-11-30&group_by={group_by}")
        assert response.status_code == 200, response.content
        body = bodies[group_by] = response.json()
        assert (body["from"], body["to"], body["group_by"]) == ("2026-11-01", "2026-11-30", group_by)
        assert _totals(body["results"]) == expected, group_by
        groups = [row[group_by] for row in body["results"]]
        assert groups == sorted(groups), group_by
        assert all(set(row) == {group_by, *FIGURES} for row in body["results"])

    assert [row["day"] for row in bodies["day"]["results"]] == ["2026-11-29", "2026-11-30"]
    nov29_row, nov30_row = bodies["day"]["results"]
    assert (nov29_row["runs"], nov30_row["runs"]) == (2, 3)
    assert {row["agent"]: row["runs"] for row in bodies["agent"]["results"]} == {
        str(first.id): 2,
        str(second.id): 3,
    }
    assert {row["key"]: row["runs"] for row in bodies["key"]["results"]} == {
        str(client.key.id): 3,
        str(other_key_id(client)): 2,
    }
    by_model = {row["model"]: row for row in bodies["model"]["results"]}
    # The fallback: the run counts under the model admitted, its tokens under the model that ran.
    assert by_model["claude-opus-4-6"]["runs"] == 1 and by_model["claude-opus-4-6"]["billed_tokens"] == 0
    assert by_model["claude-sonnet-4-6"]["runs"] == 0 and by_model["claude-sonnet-4-6"]["billed_tokens"] > 0
    for line in usage["by_model"]:  # the billed figures per model are GET /usage's by_model lines
        row = by_model[line["model"]]
        assert [row[n] for n in FIGURES[1:]] == [line[n] for n in FIGURES[1:]]

    december = client.get("/api/v1/usage/history?from=2026-12-01&to=2026-12-31").json()
    assert december["results"] == [
        {"day": "2026-12-01", "runs": 1, "input_tokens": 0, "output_tokens": 0, "billed_tokens": 0}
    ]
    # Another user sees none of it.
    assert (
        make_client("m10").get("/api/v1/usage/history?from=2026-11-01&to=2026-11-30").json()["results"] == []
    )


def other_key_id(client):
    return client.user.api_keys.exclude(pk=client.key.pk).get().pk


@pytest.mark.django_db
def test_csv_has_the_same_rows_with_a_header(make_client, make_agent, providers):
    client = make_client("m1")
    agent = make_agent(client.user)
    execute_run(
        client.post(f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}}, format="json").json()[
            "id"
        ]
    )
    as_json = client.get("/api/v1/usage/history?group_by=model").json()
    response = client.get("/api/v1/usage/history?group_by=model", HTTP_ACCEPT="text/csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["model", *FIGURES]
    assert rows[1:] == [[row["model"], *(str(row[n]) for n in FIGURES)] for row in as_json["results"]]
    assert len(rows) == 2 and rows[1][0] == "claude-haiku-4-5" and rows[1][1] == "1"


@pytest.mark.django_db
def test_the_default_range_is_this_month_to_today(make_client):
    today = dt.datetime.now(dt.UTC).date()
    body = make_client("m1").get("/api/v1/usage/history").json()
    assert body == {
        "from": today.replace(day=1).isoformat(),
        "to": today.isoformat(),
        "group_by": "day",
        "results": [],
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query, field",
    [
        ("from=2026-13-01", "from"),
        ("from=2026-1-01", "from"),
        ("to=yesterday", "to"),
        ("from=2026-11-01&to=2026-10-31", "to"),
        ("from=2025-01-01&to=2026-01-02", "to"),  # 367 days
        ("group_by=week", "group_by"),
        ("group_by=", "group_by"),
        ("from=２０２６-11-01", "from"),
        ("from=2026-W49-1", "from"),  # an ISO week date, which date.fromisoformat takes
        ("to=20261207", "to"),
    ],
)
def test_bad_queries_are_400_invalid_even_when_csv_is_asked_for(make_client, query, field):
    client = make_client("m1")
    for accept in ("application/json", "text/csv"):
        response = client.get(f"/api/v1/usage/history?{query}", HTTP_ACCEPT=accept)
        assert response.status_code == 400
        assert response["Content-Type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "invalid" and field in error["fields"], (query, error)


@pytest.mark.django_db
def test_a_range_of_366_days_is_accepted(make_client):
    assert make_client("m1").get("/api/v1/usage/history?from=2024-01-01&to=2024-12-31").status_code == 200


@pytest.mark.django_db
def test_the_history_reads_only_usage_lines(make_client, make_agent, providers):
    client = make_client("m1")
    agent = make_agent(client.user)
    execute_run(
        client.post(f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}}, format="json").json()[
            "id"
        ]
    )
    with CaptureQueriesContext(connection) as queries:
        assert (
            client.get("/api/v1/usage/history?from=2025-12-01&to=2026-11-30&group_by=key").status_code == 200
        )
    touched = " ".join(q["sql"] for q in queries.captured_queries)
    assert "billing_usageday" in touched
    assert "billing_ledgerentry" not in touched and "agents_run" not in touched


@pytest.mark.django_db(transaction=True)
def test_concurrent_admissions_on_one_line_count_every_run(make_user, make_agent):
    user = make_user("access")
    agent = make_agent(user)

    def admit():
        return run_create(
            user=user,
            plan=plan_for(user),
            agent=agent,
            input={"message": "hi"},
            model="ollama/mistral",
            timeout_secs=60,
            max_tokens=8,
        )

    outcomes = race(16, admit)
    assert all(isinstance(outcome, Run) for outcome in outcomes), outcomes
    line = UsageDay.objects.get(user=user)
    assert (line.runs, line.model, line.agent_id, line.day) == (
        16,
        "ollama/mistral",
        agent.id,
        Run.objects.filter(user=user).first().created_at.date(),
    )


@pytest.mark.django_db
def test_the_format_override_is_no_parameter(make_client):
    response = make_client("m1").get("/api/v1/usage/history?format=csv")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
