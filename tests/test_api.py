"""The API of CONTRACT section 3, answered in-process: shapes, pagination, ownership, management commands."""

import io
import re
import uuid

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import ApiKey, hash_key
from runs.models import Run

pytestmark = pytest.mark.django_db

TIER_FIELDS = {
    "slug",
    "name",
    "rank",
    "monthly_token_quota",
    "monthly_run_quota",
    "default_model",
    "max_tokens",
    "max_timeout_secs",
    "requests_per_minute",
    "max_concurrent_runs",
}
MODEL_FIELDS = {
    "id",
    "display_name",
    "provider",
    "multiplier",
    "min_tier",
    "is_local",
    "is_pattern",
    "fallback",
    "allowed",
    "default",
}
RUN_FIELDS = {
    "id",
    "agent",
    "key",
    "status",
    "requested_model",
    "model",
    "provider",
    "input",
    "output",
    "usage",
    "error",
    "timeout_secs",
    "max_tokens",
    "created_at",
    "started_at",
    "finished_at",
}


def test_tiers_list(make_client):
    body = make_client("m1").get("/api/v1/tiers").json()
    assert (body["count"], body["next"], body["previous"]) == (7, None, None)
    assert all(set(t) == TIER_FIELDS for t in body["results"])
    by_slug = {t["slug"]: t for t in body["results"]}
    assert by_slug["m5"] == {
        "slug": "m5",
        "name": "M5",
        "rank": 2,
        "monthly_token_quota": 2_000_000,
        "monthly_run_quota": 2_000,
        "default_model": "claude-sonnet-4-6",
        "max_tokens": 4096,
        "max_timeout_secs": 3600,
        "requests_per_minute": 120,
        "max_concurrent_runs": 10,
    }
    assert by_slug["enterprise"]["monthly_token_quota"] is None
    # CONTRACT section 11's seeded limits
    assert {slug: (t["requests_per_minute"], t["max_concurrent_runs"]) for slug, t in by_slug.items()} == {
        "access": (10, 2),
        "m1": (60, 5),
        "m5": (120, 10),
        "m10": (300, 25),
        "teams": (600, 50),
        "enterprise": (None, None),
        "internal": (None, None),
    }
    assert [t["slug"] for t in body["results"]][:2] == ["access", "m1"]


@pytest.mark.parametrize(
    "tier, allowed_claude, default",
    [
        ("access", set(), "ollama/llama3.2"),
        ("m1", {"claude-haiku-4-5", "claude-haiku-4-5-20251001"}, "claude-haiku-4-5"),
        (
            "m5",
            {"claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-sonnet-4-5", "claude-sonnet-4-6"},
            "claude-sonnet-4-6",
        ),
        (
            "teams",
            {
                "claude-haiku-4-5",
                "claude-haiku-4-5-20251001",
                "claude-sonnet-4-5",
                "claude-sonnet-4-6",
                "claude-opus-4-5",
                "claude-opus-4-6",
            },
            "claude-sonnet-4-6",
        ),
    ],
)
def test_models_list_for_the_caller(make_client, tier, allowed_claude, default):
    body = make_client(tier).get("/api/v1/models?limit=100").json()
    assert body["count"] == 10
    models = {m["id"]: m for m in body["results"]}
    assert all(set(m) == MODEL_FIELDS for m in models.values())
    assert {i for i, m in models.items() if m["allowed"] and m["provider"] == "anthropic"} == allowed_claude
    assert all(m["allowed"] for i, m in models.items() if m["provider"] == "ollama")
    assert [i for i, m in models.items() if m["default"]] == [default]
    assert models["claude-opus-4-6"]["multiplier"] == "15"
    assert models["claude-opus-4-6"]["fallback"] == "claude-sonnet-4-6"
    assert models["ollama/*"]["is_pattern"] is True and models["ollama/*"]["is_local"] is True
    assert models["ollama/*"]["multiplier"] == "0"


def test_models_list_hides_inactive_and_normalizes_multipliers(make_client):
    from decimal import Decimal

    from routing.models import CatalogModel

    CatalogModel.objects.filter(id="claude-opus-4-5").update(is_active=False)
    CatalogModel.objects.filter(id="ollama/mistral").update(multiplier=Decimal("0.5000"))
    models = {m["id"]: m for m in make_client("m1").get("/api/v1/models?limit=100").json()["results"]}
    assert "claude-opus-4-5" not in models
    assert models["ollama/mistral"]["multiplier"] == "0.5"


def test_pagination_links(make_client, make_agent):
    client = make_client("m1")
    for i in range(5):
        make_agent(client.user, name=f"a{i}")
    first = client.get("/api/v1/agents?limit=2").json()
    assert first["count"] == 5
    assert [a["name"] for a in first["results"]] == ["a4", "a3"]  # newest first
    assert first["previous"] is None and "offset=2" in first["next"]
    last = client.get("/api/v1/agents?limit=2&offset=4").json()
    assert [a["name"] for a in last["results"]] == ["a0"] and last["next"] is None
    assert client.get("/api/v1/agents").json()["count"] == 5


def test_agent_crud(make_client):
    client = make_client("m1")
    created = client.post(
        "/api/v1/agents", {"name": "writer", "description": "d", "model": "claude-opus-4-6"}, format="json"
    )
    assert created.status_code == 201
    agent = created.json()
    assert set(agent) == {"id", "name", "description", "system_prompt", "model", "created_at", "updated_at"}
    assert uuid.UUID(agent["id"]) and agent["model"] == "claude-opus-4-6" and agent["system_prompt"] == ""
    assert agent["created_at"].endswith("Z")
    patched = client.patch(
        f"/api/v1/agents/{agent['id']}", {"model": None, "system_prompt": "be terse"}, format="json"
    ).json()
    assert (patched["model"], patched["system_prompt"], patched["name"]) == (None, "be terse", "writer")
    assert client.get(f"/api/v1/agents/{agent['id']}").json()["system_prompt"] == "be terse"
    # A misspelt field is refused, not dropped (which would answer 200 and change nothing).
    misspelt = client.patch(f"/api/v1/agents/{agent['id']}", {"system_promt": "x"}, format="json")
    assert misspelt.status_code == 400
    assert misspelt.json()["error"]["fields"] == {"system_promt": ["Unknown field."]}
    assert client.get(f"/api/v1/agents/{agent['id']}").json()["system_prompt"] == "be terse"
    unknown = client.post("/api/v1/agents", {"name": "w", "temperature": 1}, format="json")
    assert (unknown.status_code, list(unknown.json()["error"]["fields"])) == (400, ["temperature"])
    assert client.delete(f"/api/v1/agents/{agent['id']}").status_code == 204
    assert client.get(f"/api/v1/agents/{agent['id']}").status_code == 404


def test_deleting_an_agent_keeps_its_runs(make_client, make_agent):
    client = make_client("m1")
    agent = make_agent(client.user)
    run = client.post(f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}}, format="json").json()
    client.delete(f"/api/v1/agents/{agent.id}")
    kept = client.get(f"/api/v1/runs/{run['id']}").json()
    assert kept["agent"] is None and kept["status"] == "queued"


def test_run_create_shape_and_resolution_order(make_client, make_agent, django_capture_on_commit_callbacks):
    client = make_client("m10")
    agent = make_agent(client.user, model="claude-sonnet-4-6", system_prompt="")
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            f"/api/v1/agents/{agent.id}/run",
            {"input": {"message": "hi", "lang": "en"}, "max_tokens": 100, "timeout_secs": 60},
            format="json",
        )
    assert response.status_code == 202
    assert len(callbacks) == 1  # exactly one dispatch, after commit
    run = response.json()
    assert set(run) == RUN_FIELDS
    assert run["key"] == str(client.key.id)  # the run names the key that admitted it
    assert (run["status"], run["requested_model"], run["model"], run["provider"]) == (
        "queued",
        "claude-sonnet-4-6",
        "claude-sonnet-4-6",
        "anthropic",
    )
    assert run["input"] == {"message": "hi", "lang": "en"}
    assert (run["timeout_secs"], run["max_tokens"]) == (60, 100)
    assert run["usage"] == {
        "input_tokens": None,
        "output_tokens": None,
        "multiplier": "3",
        "billed_tokens": None,
    }
    assert run["output"] is None and run["error"] is None and run["started_at"] is None
    stored = Run.objects.get(pk=run["id"])
    assert (
        stored.system_prompt == f'You are a Maschina agent named "{agent.name}". Complete the task provided.'
    )
    # body model beats the agent's; no model anywhere -> tier default with requested_model null
    body = client.post(
        f"/api/v1/agents/{agent.id}/run",
        {"input": {"message": "hi"}, "model": "claude-haiku-4-5"},
        format="json",
    ).json()
    assert (body["requested_model"], body["model"]) == ("claude-haiku-4-5", "claude-haiku-4-5")
    plain = make_agent(client.user)
    default = client.post(
        f"/api/v1/agents/{plain.id}/run", {"input": {"message": "hi"}}, format="json"
    ).json()
    assert (default["requested_model"], default["model"], default["timeout_secs"], default["max_tokens"]) == (
        None,
        "claude-opus-4-6",
        300,
        4096,
    )


def test_runs_lists_filters_and_cancel(make_client, make_agent):
    client = make_client("m1")
    a1, a2 = make_agent(client.user, name="one"), make_agent(client.user, name="two")
    ids = [
        client.post(f"/api/v1/agents/{a.id}/run", {"input": {"message": "hi"}}, format="json").json()["id"]
        for a in (a1, a2, a1)
    ]
    canceled = client.post(f"/api/v1/runs/{ids[0]}/cancel").json()
    assert (
        canceled["status"] == "canceled"
        and canceled["error"]["code"] == "canceled"
        and canceled["finished_at"]
    )
    assert [r["id"] for r in client.get("/api/v1/runs").json()["results"]] == ids[::-1]
    assert [r["id"] for r in client.get(f"/api/v1/agents/{a1.id}/runs").json()["results"]] == [ids[2], ids[0]]
    assert [r["id"] for r in client.get("/api/v1/runs?status=queued").json()["results"]] == [ids[2], ids[1]]
    assert [
        r["id"] for r in client.get(f"/api/v1/agents/{a1.id}/runs?status=canceled").json()["results"]
    ] == [ids[0]]
    usage = client.get("/api/v1/usage").json()
    assert usage["runs"]["used"] == 3
    assert usage["tokens"]["reserved"] == 2 * Run.objects.get(pk=ids[1]).reserved_tokens


def test_usage_shape_and_past_period(make_client):
    client = make_client("m1")
    usage = client.get("/api/v1/usage").json()
    assert set(usage) == {"tier", "period", "tokens", "runs", "by_model", "by_key"}
    assert usage["tokens"] == {"used": 0, "reserved": 0, "limit": 500_000, "remaining": 500_000}
    assert usage["runs"] == {"used": 0, "limit": 500, "remaining": 500}
    assert re.fullmatch(r"\d{4}-\d{2}-01T00:00:00Z", usage["period"]["start"])
    past = client.get("/api/v1/usage?period=2025-12").json()
    assert past["period"] == {"start": "2025-12-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
    assert client.get("/api/v1/usage?period=2025-13").status_code == 400


def test_healthz_needs_no_auth():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "broker": "ok"}


def test_openapi_schema_is_valid_and_complete(catalog):
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    import json

    paths = set(json.loads(out.getvalue())["paths"])
    assert {
        "/api/v1/tiers",
        "/api/v1/models",
        "/api/v1/agents",
        "/api/v1/agents/{agent_id}",
        "/api/v1/agents/{agent_id}/run",
        "/api/v1/agents/{agent_id}/runs",
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/cancel",
        "/api/v1/runs/{run_id}/events",
        "/api/v1/usage",
    } <= paths
    response = Client().get("/api/schema/")
    assert response.status_code == 200


def test_set_tier_and_create_api_key_commands(catalog):
    out = io.StringIO()
    call_command("set_tier", "zed", "m5", "--token-quota", "1234", "--run-quota", "9", stdout=out)
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username="zed")
    assert (user.plan.tier_id, user.plan.token_quota_override, user.plan.run_quota_override) == (
        "m5",
        1234,
        9,
    )
    call_command("set_tier", "zed", "teams", "--token-quota", "none", stdout=out)
    user.plan.refresh_from_db()
    assert (user.plan.tier_id, user.plan.token_quota_override, user.plan.run_quota_override) == (
        "teams",
        None,
        9,
    )

    out = io.StringIO()
    call_command("create_api_key", "zed", "--name", "ci", stdout=out)
    key = out.getvalue().strip().splitlines()[-1]
    assert re.fullmatch(r"msk_live_[A-Za-z0-9_-]{40,}", key)
    stored = ApiKey.objects.get(user=user)
    assert stored.key_hash == hash_key(key) and key not in (stored.key_hash, stored.lookup)
    response = Client().get("/api/v1/usage", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200 and response.json()["tier"] == "teams"


@pytest.mark.parametrize(
    "args", [["zed", "gold"], ["zed", "m1", "--token-quota", "-5"], ["zed", "m1", "--run-quota", "lots"]]
)
def test_set_tier_rejects_bad_arguments(catalog, args):
    from django.core.management import CommandError

    with pytest.raises((CommandError, SystemExit)):
        call_command("set_tier", *args, stdout=io.StringIO(), stderr=io.StringIO())


def test_a_run_admitted_after_an_edit_is_priced_by_it_whatever_the_refresh_interval(
    make_client, make_agent, settings, django_assert_num_queries
):
    """The key lookup carries the rules revision, so an edit committed before the request is seen at
    once, in any process, with no query of its own."""
    from routing.models import CatalogModel
    from routing.snapshot import get_rules

    client = make_client("m1")
    agent = make_agent(client.user)
    settings.RULES_REFRESH_SECS = 3600  # the interval check alone would not see the edit for an hour
    assert get_rules().lookup("claude-haiku-4-5").multiplier == 1
    haiku = CatalogModel.objects.get(id="claude-haiku-4-5")
    haiku.multiplier = 2
    haiku.save()
    response = client.post(f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["usage"]["multiplier"] == "2"
    with django_assert_num_queries(2):  # key (with the revision) and run: the unchanged rules cost nothing
        assert client.get(f"/api/v1/runs/{response.json()['id']}").status_code == 200


def test_a_text_field_that_may_be_blank_admits_the_blank_string_in_the_schema(catalog):
    """drf-spectacular gives such a field oneOf [its pattern, a blank string]; "" matches both, and
    oneOf then refuses it (schemathesis's stateful phase sent an agent "description": "" as invalid).
    Every field reads as one string schema whose pattern admits ""."""
    import json
    import re

    out = io.StringIO()
    call_command("spectacular", "--format", "openapi-json", stdout=out)
    schemas = json.loads(out.getvalue())["components"]["schemas"]
    for name in ("AgentWriteRequest", "PatchedAgentWriteRequest"):
        description = schemas[name]["properties"]["description"]
        assert "oneOf" not in description
        assert description["type"] == "string" and description["maxLength"] == 10_000
        assert re.fullmatch(description["pattern"], "")
    blank_branch = {"type": "string", "maxLength": 0}
    assert not [
        (name, field)
        for name, schema in schemas.items()
        for field, prop in schema.get("properties", {}).items()
        if blank_branch in prop.get("oneOf", [])
    ]
