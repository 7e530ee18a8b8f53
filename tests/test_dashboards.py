"""The admin's views of the rules and the usage, in-process: what a tier may run (decided by the
API's own gate), the tiers per model, the usage dashboard's charts and a user's page."""

import datetime as dt
import re

import pytest

from routing.models import TierModelRule
from runs.models import Run
from runs.tasks import execute_run

from .emulators import anthropic_error

pytestmark = pytest.mark.django_db


def access_rows(html: str) -> dict[str, str]:
    return dict(re.findall(r'class="access-row" data-name="([^"]+)" data-allowed="(yes|no)"', html))


def chart(html: str, name: str) -> list[tuple[str, int]]:
    svg = re.search(rf'<svg [^>]*data-chart="{name}".*?</svg>', html, re.S)
    assert svg, f"no chart {name}"
    return [
        (label, int(value)) for label, value in re.findall(r'data-label="([^"]*)" data-value="(\d+)"', svg[0])
    ]


def test_the_tier_page_shows_what_the_gate_decides_before_and_after_a_rule(admin_client, make_client):
    client = make_client("m1")
    page = admin_client.get("/admin/routing/tier/m1/change/").content.decode()
    rows = access_rows(page)
    api = {
        m["id"]: "yes" if m["allowed"] else "no"
        for m in client.get("/api/v1/models?limit=100").json()["results"]
    }
    assert rows == api  # every catalog row, and the same verdict as GET /models for an m1 caller
    assert (
        rows["claude-haiku-4-5"] == "yes" and rows["claude-sonnet-4-6"] == "no" and rows["ollama/*"] == "yes"
    )
    assert "min tier m5: m1 ranks below it" in page
    assert "pattern row: any id starting with ollama/" in page

    TierModelRule.objects.create(tier_id="m1", model_id="claude-sonnet-4-6", effect="allow")
    TierModelRule.objects.create(tier_id="m1", model_id="ollama/mistral", effect="deny")
    page = admin_client.get("/admin/routing/tier/m1/change/").content.decode()
    rows = access_rows(page)
    assert (rows["claude-sonnet-4-6"], rows["ollama/mistral"]) == ("yes", "no")
    assert (
        "allowed by a rule of m1 (min tier m5)" in page and "denied by a rule of m1 (min tier access)" in page
    )
    api = {
        m["id"]: "yes" if m["allowed"] else "no"
        for m in client.get("/api/v1/models?limit=100").json()["results"]
    }
    assert rows == api


def test_the_catalog_shows_the_tiers_that_may_use_each_model(admin_client):
    listing = admin_client.get("/admin/routing/catalogmodel/").content.decode()
    tiers = dict(
        re.findall(
            r'<a href="/admin/routing/catalogmodel/([^/]+)/change/">.*?'
            r'<span class="tiers-allowed">([^<]*)</span>',
            listing,
            re.S,
        )
    )
    assert tiers["claude-opus-4-6"] == "m10, teams, enterprise, internal"
    assert tiers["claude-haiku-4-5"] == "m1, m5, m10, teams, enterprise, internal"
    page = admin_client.get("/admin/routing/catalogmodel/claude-sonnet-4-6/change/").content.decode()
    allowed = {"m5", "m10", "teams", "enterprise", "internal"}
    tiers = ["access", "m1", *sorted(allowed)]
    assert access_rows(page) == {t: "yes" if t in allowed else "no" for t in tiers}


def test_the_usage_dashboard_and_a_users_page(admin_client, make_client, make_agent, providers):
    client = make_client("m1", token_quota=1_000)
    agent = make_agent(client.user)
    providers[0].queue("claude-haiku-4-5", anthropic_error(401, "authentication_error"))
    ids = [
        client.post(
            f"/api/v1/agents/{agent.id}/run",
            {"input": {"message": "hi"}, "max_tokens": 100, **body},
            format="json",
        ).json()["id"]
        for body in ({}, {}, {"model": "ollama/mistral"})
    ]
    for run_id in ids:
        execute_run(run_id)
    today = dt.datetime.now(dt.UTC).date()
    billed = Run.objects.get(pk=ids[1]).billed_tokens
    assert billed == 62

    page = admin_client.get("/admin/dashboards/usage/").content.decode()
    per_day = chart(page, "tokens-per-day")
    assert per_day[0][0] == today.replace(day=1).isoformat() and dict(per_day)[today.isoformat()] == billed
    assert sum(v for _, v in per_day) == billed
    assert dict(chart(page, "tokens-by-model")) == {"claude-haiku-4-5": billed, "ollama/mistral": 0}
    assert chart(page, "top-users") == [(client.user.username, billed)]
    assert dict(chart(page, "runs-by-status"))["completed"] == 2
    assert dict(chart(page, "runs-by-status"))["failed"] == 1
    assert chart(page, "failures-by-code") == [("provider_auth", 1)]
    assert f'data-user="{client.user.username}" data-token-share="6.2" data-run-share="0.6"' in page

    page = admin_client.get(f"/admin/dashboards/users/{client.user.pk}/").content.decode()
    assert re.search(r'data-field="tier">m1 ', page) and 'data-field="token-override">1000<' in page
    assert 'data-field="tokens-used">62<' in page and 'data-field="runs-used">3<' in page
    assert dict(chart(page, "user-tokens-per-day"))[today.isoformat()] == billed
    assert page.count('class="key"') == 1 and f"msk_live_{client.key.lookup}" in page
    assert re.findall(r'class="run" data-status="(\w+)"', page) == ["completed", "completed", "failed"]
    assert admin_client.get("/admin/dashboards/users/999999/").status_code == 404


def test_dashboards_are_for_staff_only(client, make_user):
    assert client.get("/admin/dashboards/usage/").status_code == 302  # to the admin's login
    user = make_user("m1")
    assert client.get(f"/admin/dashboards/users/{user.pk}/").status_code == 302
