"""CONTRACT section 14's edges that the in-process client can reach: input size, UUID case in
paths, numeric query parameters. Each refusal is JSON and leaves nothing behind."""

import json

import pytest

from billing.models import UsagePeriod
from runs.models import Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(make_client):
    return make_client("m1")


@pytest.fixture
def agent(client, make_agent):
    return make_agent(client.user)


def post_run(client, agent, body):
    return client.post(f"/api/v1/agents/{agent.id}/run", json.dumps(body), content_type="application/json")


def test_input_too_long_other_than_message(client, agent, providers):
    extras = {"notes": "x" * (16 * 1024)}  # 16 KiB of text is more than 16 KiB as JSON
    response = post_run(client, agent, {"input": {"message": "hi", **extras}})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "input_too_long"
    assert Run.objects.count() == 0
    assert not UsagePeriod.objects.filter(runs_used__gt=0).exists()


def test_input_extras_of_exactly_16_kib_as_json_are_accepted(client, agent, providers):
    overhead = len(json.dumps({"notes": ""}, separators=(",", ":")))
    extras = {"notes": "é" * ((16 * 1024 - overhead) // 2)}  # two UTF-8 bytes each
    assert len(json.dumps(extras, ensure_ascii=False, separators=(",", ":")).encode()) == 16 * 1024
    response = post_run(client, agent, {"input": {"message": "hi", **extras}})
    assert response.status_code == 202, response.content
    assert response.json()["input"]["notes"] == extras["notes"]


def test_ids_in_paths_in_any_letter_case(client, agent, providers):
    run = post_run(client, agent, {"input": {"message": "hi"}}).json()
    for path in (
        f"/api/v1/runs/{run['id']}",
        f"/api/v1/agents/{agent.id}",
        f"/api/v1/agents/{agent.id}/runs",
    ):
        upper = path.replace(run["id"], run["id"].upper()).replace(str(agent.id), str(agent.id).upper())
        response = client.get(upper)
        assert response.status_code == 200, (upper, response.content)
    assert client.get(f"/api/v1/runs/{run['id'].upper()}").json()["id"] == run["id"]
    cancel = client.post(f"/api/v1/runs/{run['id'].upper()}/cancel")
    assert cancel.status_code == 200 and cancel.json()["status"] == "canceled"
    # Not a UUID at all: still the JSON 404.
    response = client.get("/api/v1/runs/not-a-uuid")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    "query",
    [
        "limit=٥",
        "limit=+5",
        "limit=1_0",
        "limit=%201",
        "limit=1%20",
        "limit=",
        "offset=",
        "offset=-0",
        "offset=٣",
        "limit=５",
        "limit=" + "1" * 5000,  # int() of this many digits raises
        "offset=" + "1" * 5000,
        "offset=" + "1" * 19,  # past the bigint an OFFSET takes
    ],
)
def test_numeric_query_parameters_are_ascii_digits_only(client, query):
    for path in ("/api/v1/runs", "/api/v1/agents", "/api/v1/models", "/api/v1/tiers"):
        response = client.get(f"{path}?{query}")
        assert response.status_code == 400, (path, query, response.content)
        error = response.json()["error"]
        name = query.split("=")[0]
        assert (error["code"], list(error["fields"])) == ("invalid", [name])


def test_ascii_digits_are_accepted(client, agent):
    assert client.get("/api/v1/agents?limit=05&offset=0").json()["count"] == 1


@pytest.mark.parametrize("period", ["٢٠٢٦-٠١", "２０２６-０１", "2026-1", "+202-01", ""])
def test_period_is_ascii_digits_only(client, period):
    response = client.get("/api/v1/usage", {"period": period})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"] == {"period": ["Must be a month as YYYY-MM."]}
