"""Keys over the API (CONTRACT section 10): create, list, revoke; a key's model list and monthly
token limit at admission; expiry; who may manage keys; by_key in GET /usage; last_used_at."""

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_create
from audit.models import ChangeRecord
from billing.models import KeyUsage, Throttle, UsagePeriod
from runs.models import Run

pytestmark = pytest.mark.django_db

KEY_FIELDS = {
    "id",
    "name",
    "prefix",
    "models",
    "monthly_token_limit",
    "expires_at",
    "created_at",
    "last_used_at",
    "revoked_at",
}


def client_for(raw):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def new_key(client, **body):
    response = client.post("/api/v1/keys", {"name": "ci", **body}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def run(client, agent, **body):
    return client.post(f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}, **body}, format="json")


def test_create_shows_the_secret_once_and_lists_never_do(make_client):
    client = make_client("m1")
    created = new_key(client, models=["claude-haiku-4-5"], monthly_token_limit=1000)
    assert set(created) == KEY_FIELDS | {"key"}
    assert created["key"].startswith("msk_live_") and len(created["key"]) >= 49
    assert created["prefix"] == created["key"][:12]
    assert created["models"] == ["claude-haiku-4-5"] and created["monthly_token_limit"] == 1000
    assert created["revoked_at"] is None and created["last_used_at"] is None
    stored = ApiKey.objects.get(pk=created["id"])
    assert created["key"] not in str(vars(stored))  # only its hash is kept

    listed = client.get("/api/v1/keys").json()
    assert listed["count"] == 2  # the client's own key and the new one, newest first
    assert listed["results"][0]["id"] == created["id"]
    assert all(set(k) == KEY_FIELDS for k in listed["results"])
    detail = client.get(f"/api/v1/keys/{created['id']}").json()
    assert set(detail) == KEY_FIELDS and detail["prefix"] == created["prefix"]

    # the new key works, and is recorded by the audit like every other change
    assert client_for(created["key"]).get("/api/v1/keys").status_code == 200
    assert ChangeRecord.objects.filter(object_id=created["id"]).exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 5}, "name"),
        ({}, "name"),
        ({"models": "claude-haiku-4-5"}, "models"),
        ({"models": []}, "models"),
        ({"models": [1]}, "models"),
        ({"models": {"a": 1}}, "models"),
        ({"models": ["claude-nonexistent"]}, "models"),
        ({"models": ["ollama/"]}, "models"),
        ({"monthly_token_limit": -1}, "monthly_token_limit"),
        ({"monthly_token_limit": "100"}, "monthly_token_limit"),
        ({"monthly_token_limit": True}, "monthly_token_limit"),
        ({"monthly_token_limit": 1.5}, "monthly_token_limit"),
        ({"monthly_token_limit": 2**63}, "monthly_token_limit"),  # past a bigint column
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_at": 12}, "expires_at"),
        ({"scopes": ["all"]}, "scopes"),
    ],
)
def test_bad_key_fields_are_refused_and_store_nothing(make_client, body, field):
    client = make_client("m1")
    before = ApiKey.objects.count()
    payload = {"name": "ci", **body} if "name" not in body and body != {} else body
    response = client.post("/api/v1/keys", payload, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error
    assert ApiKey.objects.count() == before


def test_patterns_and_ids_a_pattern_covers_are_catalog_models(make_client):
    client = make_client("m1")
    assert new_key(client, models=["ollama/*", "ollama/qwen2", "ollama/*"])["models"] == [
        "ollama/*",
        "ollama/qwen2",
    ]


def test_restricted_keys_may_not_manage_keys(make_client):
    client = make_client("m1")
    for restriction in ({"models": ["claude-haiku-4-5"]}, {"monthly_token_limit": 10}):
        restricted = client_for(new_key(client, **restriction)["key"])
        before = ApiKey.objects.count()
        response = restricted.post("/api/v1/keys", {"name": "escape"}, format="json")
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
        own = client.key.pk
        assert restricted.delete(f"/api/v1/keys/{own}").status_code == 403
        assert ApiKey.objects.count() == before and ApiKey.objects.get(pk=own).revoked_at is None
        assert restricted.get("/api/v1/keys").status_code == 200  # reading is not managing


def test_another_users_key_is_not_found(make_client):
    alice, bob = make_client("m1"), make_client("m1")
    bobs = new_key(bob)
    for response in (alice.get(f"/api/v1/keys/{bobs['id']}"), alice.delete(f"/api/v1/keys/{bobs['id']}")):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert ApiKey.objects.get(pk=bobs["id"]).revoked_at is None


def test_a_revoked_key_answers_401_from_the_next_request_on(make_client):
    client = make_client("m1")
    created = new_key(client)
    other = client_for(created["key"])
    assert other.get("/api/v1/keys").status_code == 200
    assert client.delete(f"/api/v1/keys/{created['id']}").status_code == 204
    response = other.get("/api/v1/keys")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert response["WWW-Authenticate"] == "Bearer"
    revoked = client.get(f"/api/v1/keys/{created['id']}").json()
    assert revoked["revoked_at"] is not None
    assert client.delete(f"/api/v1/keys/{created['id']}").status_code == 204  # again: no change
    assert client.get(f"/api/v1/keys/{created['id']}").json()["revoked_at"] == revoked["revoked_at"]
    assert ChangeRecord.objects.filter(object_id=created["id"]).count() == 2  # made, revoked


def test_an_expired_key_answers_api_key_expired(make_client):
    client = make_client("m1")
    created = new_key(client, expires_at=(timezone.now() + dt.timedelta(seconds=30)).isoformat())
    expiring = client_for(created["key"])
    assert expiring.get("/api/v1/keys").status_code == 200
    ApiKey.objects.filter(pk=created["id"]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    response = expiring.get("/api/v1/keys")
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_expired"
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("model", ["ollama/\\u0000x", "ollama/\\ud800"])
def test_a_model_id_jsonb_cannot_store_is_refused(make_client, model):
    client = make_client("m1")
    body = '{"name": "ci", "models": ["' + model + '"]}'  # a NUL, a lone surrogate: raw JSON escapes
    response = client.post("/api/v1/keys", body, content_type="application/json")
    assert response.status_code == 400 and "models" in response.json()["error"]["fields"]
    assert ApiKey.objects.count() == 1  # the client's own


@pytest.mark.parametrize(
    "path", ["/api/v1/runs/{id}/events", "/api/v1/runs/{id}?wait=x", "/api/v1/runs/{id}?wait=1"]
)
def test_an_expired_key_is_401_on_the_held_and_streamed_answers_too(make_client, make_agent, path):
    client = make_client("m1")
    agent = make_agent(client.user)
    run_id = client.post(
        f"/api/v1/agents/{agent.id}/run", {"input": {"message": "hi"}}, format="json"
    ).json()["id"]
    ApiKey.objects.filter(pk=client.key.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    response = client.get(path.format(id=run_id))
    assert response.status_code == 401, response.content[:300]
    assert response.json()["error"]["code"] == "api_key_expired" and response["WWW-Authenticate"] == "Bearer"


def test_last_used_at_is_written_at_most_once_a_minute(make_client):
    client = make_client("m1")
    key = ApiKey.objects.get(pk=client.key.pk)
    assert key.last_used_at is None
    client.get("/api/v1/keys")
    first = ApiKey.objects.get(pk=key.pk).last_used_at
    assert first is not None
    for _ in range(3):
        client.get("/api/v1/keys")
    assert ApiKey.objects.get(pk=key.pk).last_used_at == first  # no write per request
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=first - dt.timedelta(seconds=61))
    client.get("/api/v1/keys")
    assert ApiKey.objects.get(pk=key.pk).last_used_at > first
    assert not ChangeRecord.objects.filter(object_id=str(key.pk)).exclude(action="create").exists()


def test_a_keys_model_list_applies_to_the_model_that_would_run(make_client, make_agent):
    client = make_client("m5")  # default model claude-sonnet-4-6
    agent = make_agent(client.user)
    limited = client_for(new_key(client, models=["claude-haiku-4-5", "ollama/*"])["key"])
    refused = run(limited, agent)  # the tier default is not on the list
    assert refused.status_code == 403, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "key_model_not_allowed"
    assert error["model"] == "claude-sonnet-4-6"
    assert error["allowed_models"] == ["claude-haiku-4-5", "ollama/*"]
    assert Run.objects.count() == 0 and not UsagePeriod.objects.exists()
    assert run(limited, agent, model="claude-haiku-4-5").status_code == 202
    assert run(limited, agent, model="ollama/qwen2").status_code == 202  # by the pattern
    assert run(limited, agent, model="claude-haiku-4-5-20251001").status_code == 403
    # the tier's own refusal still comes first
    assert run(limited, agent, model="claude-opus-4-6").json()["error"]["code"] == "model_not_allowed"


def test_a_keys_token_limit_is_reserved_with_the_users_quota(make_client, make_agent):
    client = make_client("m1")
    agent = make_agent(client.user)
    first = run(client, agent, max_tokens=100)
    per_run = Run.objects.get(pk=first.json()["id"]).reserved_tokens
    created = new_key(client, monthly_token_limit=2 * per_run)
    capped = client_for(created["key"])
    assert run(capped, agent, max_tokens=100).status_code == 202
    assert run(capped, agent, max_tokens=100).status_code == 202
    before = (
        Run.objects.count(),
        UsagePeriod.objects.get().tokens_reserved,
        Throttle.objects.get().active_runs,
    )
    refused = run(capped, agent, max_tokens=100)
    assert refused.status_code == 429, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and error["quota"] == "key_tokens"
    assert error["limit"] == 2 * per_run and error["reserved"] == 2 * per_run and error["used"] == 0
    after = (
        Run.objects.count(),
        UsagePeriod.objects.get().tokens_reserved,
        Throttle.objects.get().active_runs,
    )
    assert after == before  # nothing left behind
    key_usage = KeyUsage.objects.get(key_id=created["id"])
    assert (key_usage.runs, key_usage.tokens_reserved) == (2, 2 * per_run)
    assert run(client, agent, max_tokens=100).status_code == 202  # the user's other key is not capped


def test_usage_lists_runs_and_billed_tokens_by_key(
    make_client, make_agent, django_capture_on_commit_callbacks
):
    from runs.services import run_cancel

    client = make_client("m1")
    agent = make_agent(client.user)
    created = new_key(client, name="ci job")
    other = client_for(created["key"])
    ids = [run(other, agent).json()["id"] for _ in range(2)] + [run(client, agent).json()["id"]]
    run_cancel(run=Run.objects.get(pk=ids[0]))
    by_key = {line["key"]: line for line in client.get("/api/v1/usage").json()["by_key"]}
    assert by_key[created["id"]] == {"key": created["id"], "name": "ci job", "runs": 2, "billed_tokens": 0}
    assert by_key[str(client.key.pk)]["runs"] == 1
    assert Run.objects.get(pk=ids[1]).key_id == ApiKey.objects.get(pk=created["id"]).pk
    assert run(other, agent).json()["key"] == created["id"]


def test_a_fallback_the_key_does_not_list_is_not_taken(make_user, make_agent, providers):
    from billing.selectors import plan_for
    from runs.admission import run_create
    from runs.tasks import execute_run

    from .emulators import anthropic_error

    anthropic = providers[0]
    user = make_user("m10")
    agent = make_agent(user)
    listed, _ = api_key_create(user=user, allowed_models=["claude-opus-4-6", "claude-sonnet-4-6"])
    opus_only, _ = api_key_create(user=user, allowed_models=["claude-opus-4-6"])
    outcomes = {}
    for key in (listed, opus_only):
        anthropic.reset()
        anthropic.queue("claude-opus-4-6", *[anthropic_error(529, "overloaded_error")] * 3)
        run_ = run_create(
            user=user, plan=plan_for(user), agent=agent, key=key, input={"message": "hi"},
            model="claude-opus-4-6", timeout_secs=60, max_tokens=100,
        )  # fmt: skip
        execute_run(str(run_.pk))
        run_.refresh_from_db()
        outcomes[key.pk] = (run_.status, run_.model, [c[1]["model"] for c in anthropic.calls][-1])
    assert outcomes[listed.pk] == ("completed", "claude-sonnet-4-6", "claude-sonnet-4-6")
    assert outcomes[opus_only.pk] == ("failed", "claude-opus-4-6", "claude-opus-4-6")
