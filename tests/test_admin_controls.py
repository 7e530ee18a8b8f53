"""The operator's side of the customer controls: tier limits and a plan's overrides edited in the
admin, keys listed, created (the secret shown once) and revoked there, every change audited."""

import pytest
from django.contrib.messages import get_messages
from rest_framework.test import APIClient

from accounts.models import ApiKey
from audit.models import ChangeRecord
from billing.models import Plan
from routing.models import Tier

from .test_admin import TIER_FORM

pytestmark = pytest.mark.django_db


def test_tier_limits_are_edited_in_the_admin_and_reach_the_api(admin_client, make_client):
    response = admin_client.post(
        "/admin/routing/tier/m1/change/", {**TIER_FORM, "requests_per_minute": 7, "max_concurrent_runs": 3}
    )
    assert response.status_code == 302, response.content[:2000]
    tier = Tier.objects.get(slug="m1")
    assert (tier.requests_per_minute, tier.max_concurrent_runs) == (7, 3)
    record = ChangeRecord.objects.filter(object_type="routing.tier", object_id="m1").latest("at")
    assert (record.source, record.after["requests_per_minute"]) == ("admin", 7)
    listed = make_client("m1").get("/api/v1/tiers").json()["results"]
    m1 = next(t for t in listed if t["slug"] == "m1")
    assert (m1["requests_per_minute"], m1["max_concurrent_runs"]) == (7, 3)
    refused = admin_client.post("/admin/routing/tier/m1/change/", {**TIER_FORM, "max_concurrent_runs": -1})
    assert refused.status_code == 200 and Tier.objects.get(slug="m1").max_concurrent_runs == 3


def test_a_plans_rate_overrides_are_edited_on_its_page_audited(admin_client, make_user):
    user = make_user("m5")
    plan = Plan.objects.get(user=user)
    form = {
        "user": user.pk,
        "tier": "m5",
        "requests_per_minute_override": 5,
        "max_concurrent_runs_unlimited": "on",
    }
    response = admin_client.post(f"/admin/billing/plan/{plan.pk}/change/", form)
    assert response.status_code == 302, response.content[:2000]
    plan.refresh_from_db()
    assert plan.requests_per_minute_override == 5 and not plan.requests_per_minute_unlimited
    assert plan.max_concurrent_runs_unlimited and plan.max_concurrent_runs_override is None
    record = ChangeRecord.objects.filter(object_type="billing.plan", object_id=str(plan.pk)).latest("at")
    assert record.source == "admin" and record.after["requests_per_minute_override"] == 5
    both = {**form, "max_concurrent_runs_override": 4}  # a number and "unlimited" at once
    assert admin_client.post(f"/admin/billing/plan/{plan.pk}/change/", both).status_code == 200
    plan.refresh_from_db()
    assert plan.max_concurrent_runs_override is None


def test_an_operator_creates_a_key_for_a_user_sees_it_once_and_revokes_it(admin_client, make_user):
    user = make_user("m1")
    response = admin_client.post(
        "/admin/accounts/apikey/add/",
        {"user": user.pk, "name": "from the admin", "allowed_models": '["claude-haiku-4-5"]'},
    )
    assert response.status_code == 302, response.content[:2000]
    key = ApiKey.objects.get(user=user, name="from the admin")
    assert key.allowed_models == ["claude-haiku-4-5"]
    (message,) = [str(m) for m in get_messages(response.wsgi_request) if "shown only now" in str(m)]
    raw = message.rsplit(" ", 1)[-1]
    assert raw.startswith("msk_live_") and raw not in str(vars(key))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/keys").status_code == 200
    shown = admin_client.get("/admin/accounts/apikey/")  # the page after saving shows the message
    assert shown.status_code == 200 and raw.encode() in shown.content
    page = admin_client.get(f"/admin/accounts/apikey/{key.pk}/change/")
    assert page.status_code == 200 and raw.encode() not in page.content  # and never again

    revoke = {"action": "revoke", "_selected_action": [str(key.pk)]}
    assert admin_client.post("/admin/accounts/apikey/", revoke).status_code == 302
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert client.get("/api/v1/keys").status_code == 401
    actions = list(
        ChangeRecord.objects.filter(object_type="accounts.apikey", object_id=str(key.pk))
        .order_by("at")
        .values_list("source", "action")
    )
    assert actions == [("admin", "create"), ("admin", "update")]


def test_a_key_with_an_unknown_model_is_refused_on_the_form(admin_client, make_user):
    user = make_user("m1")
    response = admin_client.post(
        "/admin/accounts/apikey/add/", {"user": user.pk, "name": "bad", "allowed_models": '["gpt-9"]'}
    )
    assert response.status_code == 200 and b"Not in the catalog: gpt-9" in response.content
    assert not ApiKey.objects.filter(name="bad").exists()
