"""The admin enforces the catalog invariants on its forms and keeps money records read-only."""

import pytest

from routing.models import CatalogModel, Tier

pytestmark = pytest.mark.django_db

TIER_FORM = {
    "name": "M1",
    "rank": 1,
    "monthly_token_quota": 500000,
    "monthly_run_quota": 500,
    "default_model": "claude-haiku-4-5",
    "max_tokens": 4096,
    "max_timeout_secs": 3600,
    "rules-TOTAL_FORMS": 0,
    "rules-INITIAL_FORMS": 0,
    "rules-MIN_NUM_FORMS": 0,
    "rules-MAX_NUM_FORMS": 1000,
}


def model_form(model_id, **changes):
    model = CatalogModel.objects.get(id=model_id)
    form = {
        "display_name": model.display_name,
        "provider": model.provider,
        "multiplier": str(model.multiplier),
        "min_tier": model.min_tier_id,
        "fallback": model.fallback_id or "",
        "is_active": "on" if model.is_active else "",
    }
    form.update(changes)
    return {k: v for k, v in form.items() if v != ""}


def test_tier_default_the_tier_may_not_use_is_refused_on_the_form(admin_client, catalog):
    response = admin_client.post(
        "/admin/routing/tier/m1/change/", {**TIER_FORM, "default_model": "claude-opus-4-6"}
    )
    assert response.status_code == 200  # the form again, with the error
    assert "claude-opus-4-6 is the default model of m1, which may not use it." in response.content.decode()
    assert Tier.objects.get(slug="m1").default_model_id == "claude-haiku-4-5"


def test_valid_tier_edit_is_saved(admin_client, catalog):
    response = admin_client.post("/admin/routing/tier/m1/change/", {**TIER_FORM, "max_tokens": 2048})
    assert response.status_code == 302
    assert Tier.objects.get(slug="m1").max_tokens == 2048


def test_multiplier_edit_is_saved_and_negative_refused(admin_client, catalog):
    response = admin_client.post(
        "/admin/routing/catalogmodel/claude-haiku-4-5/change/", model_form("claude-haiku-4-5", multiplier="2")
    )
    assert response.status_code == 302
    from routing.snapshot import get_rules

    assert str(get_rules().lookup("claude-haiku-4-5").multiplier.normalize()) == "2"
    response = admin_client.post(
        "/admin/routing/catalogmodel/ollama%2Fmistral/change/", model_form("ollama/mistral", multiplier="-1")
    )
    assert response.status_code == 200
    assert CatalogModel.objects.get(id="ollama/mistral").multiplier == 0


def test_deactivating_a_default_model_is_refused(admin_client, catalog):
    response = admin_client.post(
        "/admin/routing/catalogmodel/claude-haiku-4-5/change/", model_form("claude-haiku-4-5", is_active="")
    )
    assert response.status_code == 200
    assert "inactive, but it is the default model of m1" in response.content.decode()
    assert CatalogModel.objects.get(id="claude-haiku-4-5").is_active


@pytest.mark.parametrize(
    "path",
    [
        "/admin/runs/run/",
        "/admin/billing/ledgerentry/",
        "/admin/billing/usageperiod/",
        "/admin/routing/tier/",
        "/admin/routing/catalogmodel/",
        "/admin/accounts/apikey/",
        "/admin/billing/plan/",
    ],
)
def test_admin_lists_render(admin_client, catalog, path):
    assert admin_client.get(path).status_code == 200


def test_runs_and_ledger_cannot_be_added_in_the_admin(admin_client, catalog):
    assert admin_client.get("/admin/runs/run/add/").status_code == 403
    assert admin_client.get("/admin/billing/ledgerentry/add/").status_code == 403


def access_with_haiku_default_deleting(rule):
    """The access tier's form: default claude-haiku-4-5, and `rule` (its allow rule for haiku) deleted."""
    return {
        **TIER_FORM,
        "name": "Access",
        "rank": 0,
        "monthly_token_quota": 0,
        "monthly_run_quota": 50,
        "default_model": "claude-haiku-4-5",
        "rules-TOTAL_FORMS": 1,
        "rules-INITIAL_FORMS": 1,
        "rules-0-id": rule.pk,
        "rules-0-tier": "access",
        "rules-0-model": "claude-haiku-4-5",
        "rules-0-effect": "allow",
        "rules-0-DELETE": "on",
    }


def test_deleting_an_allow_rule_a_default_relies_on_is_refused(admin_client, catalog):
    from routing.models import RuleEffect, TierModelRule

    rule = TierModelRule.objects.create(
        tier_id="access", model_id="claude-haiku-4-5", effect=RuleEffect.ALLOW
    )
    Tier.objects.filter(slug="access").update(default_model_id="claude-haiku-4-5")
    response = admin_client.post(
        "/admin/routing/tier/access/change/", access_with_haiku_default_deleting(rule)
    )
    assert response.status_code == 200
    assert (
        "Cannot save the tier with these rules: claude-haiku-4-5 is the default model of access"
        in response.content.decode()
    )
    assert TierModelRule.objects.filter(pk=rule.pk).exists()


def test_a_new_default_and_a_deleted_rule_it_needs_are_refused_together(admin_client, catalog):
    """Each is fine against the database alone: the tier form sees the rule, the rule form sees the old
    default. Saved together they would leave the tier unable to use its default."""
    from routing.models import RuleEffect, TierModelRule

    rule = TierModelRule.objects.create(
        tier_id="access", model_id="claude-haiku-4-5", effect=RuleEffect.ALLOW
    )
    before = Tier.objects.get(slug="access").default_model_id
    assert before != "claude-haiku-4-5"
    response = admin_client.post(
        "/admin/routing/tier/access/change/", access_with_haiku_default_deleting(rule)
    )
    assert response.status_code == 200
    assert "which may not use it" in response.content.decode()
    assert Tier.objects.get(slug="access").default_model_id == before
    assert TierModelRule.objects.filter(pk=rule.pk).exists()


def _add_customers(count, make_user, make_agent):
    """`count` users with one of everything the admin lists: plan, key, agent, run, ledger, usage, alert."""
    import datetime
    from decimal import Decimal

    from accounts.services import api_key_create
    from billing.models import Alert, LedgerEntry, ModelUsage, UsagePeriod
    from runs.models import Run

    period = datetime.date(2026, 11, 1)
    runs = []
    for _ in range(count):
        user = make_user("m5")
        api_key_create(user=user)
        agent = make_agent(user)
        run = Run.objects.create(
            user=user,
            agent=agent,
            tier="m5",
            status="completed",
            model="claude-haiku-4-5",
            catalog_model="claude-haiku-4-5",
            provider="anthropic",
            multiplier=Decimal(1),
            system_prompt="s",
            input={"message": "m"},
            timeout_secs=60,
            max_tokens=100,
            period=period,
            reserved_tokens=200,
            input_tokens=10,
            output_tokens=5,
            billed_tokens=15,
        )
        LedgerEntry.objects.create(
            run=run,
            user=user,
            period=period,
            model=run.model,
            input_tokens=10,
            output_tokens=5,
            multiplier=1,
            billed_tokens=15,
        )
        UsagePeriod.objects.create(user=user, period=period, tokens_used=15, runs_used=1)
        ModelUsage.objects.create(user=user, period=period, model=run.model, runs=1, billed_tokens=15)
        Alert.objects.create(user=user, period=period, quota="runs", threshold=80, used=1, limit=1)
        runs.append(run)
    return runs


def _changelists():
    from django.contrib import admin

    return sorted(f"/admin/{m._meta.app_label}/{m._meta.model_name}/" for m in admin.site._registry)


def test_every_list_page_runs_a_constant_number_of_queries(admin_client, catalog, make_user, make_agent):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries(path):
        admin_client.get(path)  # warm caches (the rules snapshot, the session)
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(path).status_code == 200
        return len(captured)

    paths = _changelists()
    assert len(paths) >= 13
    _add_customers(2, make_user, make_agent)
    few = {path: queries(path) for path in paths}
    _add_customers(10, make_user, make_agent)
    assert {path: queries(path) for path in paths} == few
    print("queries per list page:", ", ".join(f"{path.split('/')[-2]} {n}" for path, n in few.items()))


@pytest.mark.parametrize(
    "path, listed",
    [
        (
            "/admin/runs/run/?status=completed&tier=m5&catalog_model=claude-haiku-4-5&period=2026-11-01",
            True,
        ),
        ("/admin/runs/run/?status=failed", False),
        ("/admin/runs/run/?tier=m10", False),
        ("/admin/runs/run/?catalog_model=claude-opus-4-6", False),
        ("/admin/billing/ledgerentry/?tier=m5&catalog_model=claude-haiku-4-5&period=2026-11-01", True),
        ("/admin/billing/ledgerentry/?period=2026-10-01", False),
        ("/admin/billing/ledgerentry/?tier=m1", False),
    ],
)
def test_runs_and_ledger_filter_by_status_tier_model_and_period(
    admin_client, catalog, make_user, make_agent, path, listed
):
    [run] = _add_customers(1, make_user, make_agent)
    page = admin_client.get(path)
    assert page.status_code == 200
    assert (str(run.id) in page.content.decode()) == listed


def test_deleting_catalog_rows_that_runs_reference_is_refused(admin_client, catalog, make_user, make_agent):
    from django.db.models import ProtectedError

    _add_customers(1, make_user, make_agent)
    CatalogModel.objects.create(
        id="ollama-unused", display_name="unused", provider="ollama", multiplier=0, min_tier_id="access"
    )
    action = {"action": "delete_selected", "_selected_action": ["claude-haiku-4-5", "ollama-unused"]}
    page = admin_client.post("/admin/routing/catalogmodel/", action)
    assert page.status_code == 200
    assert "runs were admitted under it" in page.content.decode()
    response = admin_client.post("/admin/routing/catalogmodel/", {**action, "post": "yes"})
    assert "runs were admitted under it" in response.content.decode()
    assert CatalogModel.objects.filter(id__in=["claude-haiku-4-5", "ollama-unused"]).count() == 2
    page = admin_client.post("/admin/routing/tier/m5/delete/", {"post": "yes"})
    assert "runs were admitted under it" in page.content.decode()
    assert Tier.objects.filter(slug="m5").exists()
    with pytest.raises(ProtectedError):
        CatalogModel.objects.filter(id="claude-haiku-4-5").delete()
    # A row nothing references can go.
    admin_client.post(
        "/admin/routing/catalogmodel/",
        {"action": "delete_selected", "_selected_action": ["ollama-unused"], "post": "yes"},
    )
    assert not CatalogModel.objects.filter(id="ollama-unused").exists()


def test_swagger_ui_is_served_from_local_assets(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "//cdn" not in html and "unpkg" not in html and "jsdelivr" not in html
