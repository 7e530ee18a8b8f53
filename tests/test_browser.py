"""An operator's session in a real browser : Debian's chromium, headless, driven by
Playwright, against gunicorn and a real Celery worker on PostgreSQL and Redis. Screenshots of each
step go to test-output/browser/ (or $MASCHINA_TEST_OUTPUT/browser/)."""

import os
import shutil
import time
from pathlib import Path

import pytest
import redis
from django.contrib.auth import get_user_model
from django.db import connections

from accounts.models import ApiKey
from accounts.services import api_key_create
from audit.models import ChangeRecord
from billing.plans import plan_set
from routing.models import CatalogModel, Tier

from .processes import ROOT, Api, redis_url_for, stack_env, wait_terminal, web_and_worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REDIS_URL = redis_url_for("browser")
# As root in a sandbox with no network: no setuid sandbox, no GPU, no calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "operator-password-for-tests"


@pytest.fixture
def screenshots(request):
    folder = Path(os.environ.get("MASCHINA_TEST_OUTPUT", ROOT / "test-output")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def stack(catalog, anthropic_emulator):
    anthropic_emulator.reset()
    redis.Redis.from_url(REDIS_URL).flushdb()
    # The admin as the recommended deployment serves it: the ASGI app, whose middleware runs on the
    # event loop (maschina.loop_middleware) and saves sessions and messages on the request's thread.
    env = stack_env(broker_url=REDIS_URL, anthropic=anthropic_emulator)
    with web_and_worker(env, "browser", server="uvicorn") as url:
        yield url


@pytest.fixture
def page(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are plain
    # synchronous calls between browser steps, so Django's async-context guard does not apply.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def customer(tier):
    user = get_user_model().objects.create(username=f"customer-{tier}-{time.monotonic_ns()}")
    plan_set(user=user, tier_slug=tier)
    key, raw = api_key_create(user=user, name="browser test")
    return key, raw


def test_an_operator_changes_a_multiplier_is_refused_a_bad_default_and_revokes_a_key(
    stack, page, screenshots
):
    try:
        operator_session(stack, page, screenshots)
    finally:
        # Under Playwright the ORM runs in a context of its own, with a connection of its own: close
        # it here, or the test database could not be dropped at the end.
        connections.close_all()


def operator_session(stack, page, screenshots):
    from playwright.sync_api import expect

    get_user_model().objects.create_superuser("operator", "operator@example.com", PASSWORD)
    key, raw = customer("m1")
    api = Api(stack, raw)

    page.goto(f"{stack}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()
    expect(page.locator("body")).to_contain_text("Site administration")
    page.screenshot(path=screenshots / "1-logged-in.png", full_page=True)

    # 1. claude-haiku-4-5 costs 2x from now on.
    page.goto(f"{stack}/admin/routing/catalogmodel/claude-haiku-4-5/change/")
    page.fill("#id_multiplier", "2")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist .success")).to_contain_text("was changed successfully")
    page.screenshot(path=screenshots / "2-multiplier-saved.png", full_page=True)
    assert str(CatalogModel.objects.get(id="claude-haiku-4-5").multiplier) == "2.0000"
    # No wait: whichever web process takes the run reads the rules revision with the API key.
    agent = api.post("/api/v1/agents", {"name": "after the edit"}).json()
    created = api.post(f"/api/v1/agents/{agent['id']}/run", {"input": {"message": "hello"}})
    assert created.status_code == 202, created.text
    run = wait_terminal(api, created.json()["id"])
    assert run["status"] == "completed", run
    usage = run["usage"]
    assert (run["model"], usage["multiplier"]) == ("claude-haiku-4-5", "2")
    assert usage["billed_tokens"] == (usage["input_tokens"] + usage["output_tokens"]) * 2 == 124

    # 2. m1 may not default to a model it may not use: the form says so and nothing changes.
    records = ChangeRecord.objects.count()
    page.goto(f"{stack}/admin/routing/tier/m1/change/")
    page.select_option("#id_default_model", "claude-opus-4-6")
    page.click("input[name=_save]")
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-default_model .errorlist")).to_contain_text(
        "claude-opus-4-6 is the default model of m1, which may not use it."
    )
    page.screenshot(path=screenshots / "3-default-refused.png", full_page=True)
    assert Tier.objects.get(slug="m1").default_model_id == "claude-haiku-4-5"
    assert ChangeRecord.objects.count() == records

    # 3. A revoked key stops working.
    assert api.get("/api/v1/usage").status_code == 200
    page.goto(f"{stack}/admin/accounts/apikey/")
    page.check(f"input[name=_selected_action][value='{key.pk}']")
    page.select_option("select[name=action]", "revoke")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Revoked 1 key(s).")
    page.screenshot(path=screenshots / "4-key-revoked.png", full_page=True)
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    denied = api.get("/api/v1/usage")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key", denied.text

    # The audit shows both saves as the operator's.
    page.goto(f"{stack}/admin/audit/changerecord/?source__exact=admin")
    expect(page.locator("#result_list")).to_contain_text("catalogmodel")
    expect(page.locator("#result_list")).to_contain_text("apikey")
    page.screenshot(path=screenshots / "5-audit.png", full_page=True)
    actors = set(ChangeRecord.objects.filter(source="admin").values_list("actor", flat=True))
    assert len(actors) == 1 and actors.pop().startswith("operator ")


def test_an_operator_reads_the_usage_dashboard_a_users_page_and_what_a_tier_may_run(
    stack, page, screenshots, anthropic_emulator
):
    try:
        dashboards_session(stack, page, screenshots, anthropic_emulator)
    finally:
        connections.close_all()


def dashboards_session(stack, page, screenshots, anthropic_emulator):
    import datetime as dt

    from playwright.sync_api import expect

    from .emulators import anthropic_error

    get_user_model().objects.create_superuser("operator", "operator@example.com", PASSWORD)
    key, raw = customer("m1")
    api = Api(stack, raw)
    agent = api.post("/api/v1/agents", {"name": "charted"}).json()
    anthropic_emulator.queue("claude-haiku-4-5", anthropic_error(401, "authentication_error"))
    runs = [
        api.post(f"/api/v1/agents/{agent['id']}/run", {"input": {"message": "hi"}}).json() for _ in range(3)
    ]
    statuses = sorted(wait_terminal(api, run["id"])["status"] for run in runs)
    assert statuses == ["completed", "completed", "failed"]
    today = dt.datetime.now(dt.UTC).date().isoformat()

    page.goto(f"{stack}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.click("#dashboards a")  # the admin's home page lists the dashboards
    expect(page.locator("h1")).to_contain_text("Usage")

    def bars(chart):
        svg = page.locator(f'svg[data-chart="{chart}"]')
        expect(svg).to_be_visible()
        return {
            g.get_attribute("data-label"): int(g.get_attribute("data-value"))
            for g in svg.locator("g.bar").all()
        }

    per_day = bars("tokens-per-day")
    assert per_day[today] == 124 and sum(per_day.values()) == 124  # two haiku runs, 62 each
    assert len(per_day) >= 28  # every day of the month, idle ones at 0
    today_bar = page.locator(f'svg[data-chart="tokens-per-day"] g.bar[data-label="{today}"] rect')
    assert today_bar.bounding_box()["height"] > 100  # drawn, at the top of the scale
    assert bars("tokens-by-model") == {"claude-haiku-4-5": 124}
    username = key.user.username
    assert bars("top-users") == {username: 124}
    by_status = bars("runs-by-status")
    assert (by_status["completed"], by_status["failed"], by_status["queued"]) == (2, 1, 0)
    assert bars("failures-by-code") == {"provider_auth": 1}
    share = page.locator(f'tr.quota-share[data-user="{username}"]')
    assert share.get_attribute("data-token-share") == "0.0"  # 124 of 500,000
    assert share.get_attribute("data-run-share") == "0.6"  # 3 of 500
    page.screenshot(path=screenshots / "6-usage-dashboard.png", full_page=True)

    share.locator("a").click()
    expect(page.locator("h1")).to_contain_text(username)
    expect(page.locator('#plan td[data-field="tier"]')).to_contain_text("m1")
    expect(page.locator('#usage [data-field="tokens-used"]')).to_have_text("124")
    expect(page.locator('#usage [data-field="runs-used"]')).to_have_text("3")
    expect(page.locator("#keys tr.key")).to_have_count(1)
    expect(page.locator("#recent-runs tr.run")).to_have_count(3)
    expect(page.locator('#recent-runs tr.run[data-status="failed"]')).to_contain_text("provider_auth")
    assert bars("user-tokens-per-day")[today] == 124
    page.screenshot(path=screenshots / "7-user-page.png", full_page=True)

    page.goto(f"{stack}/admin/routing/tier/m1/change/")
    table = page.locator(".field-model_access table.access-table")
    expect(table).to_be_visible()
    allowed = {
        row.get_attribute("data-name"): row.get_attribute("data-allowed")
        for row in table.locator("tr.access-row").all()
    }
    from_api = {
        m["id"]: "yes" if m["allowed"] else "no"
        for m in api.get("/api/v1/models?limit=100").json()["results"]
    }
    assert allowed == from_api and allowed["claude-sonnet-4-6"] == "no"
    table.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "8-tier-access.png", full_page=True)
