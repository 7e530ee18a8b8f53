"""The admin enforces the catalog invariants on its forms and keeps money records read-only."""
import pytest

from routing.models import CatalogModel, Tier

pytestmark = pytest.mark.django_db

TIER_FORM = {
    "name": "M1", "rank": 1, "monthly_token_quota": 500000, "monthly_run_quota": 500, "default_model": "claude-haiku-4-5",
    "max_tokens": 4096, "max_timeout_secs": 3600,
    "rules-TOTAL_FORMS": 0, "rules-INITIAL_FORMS": 0, "rules-MIN_NUM_FORMS": 0, "rules-MAX_NUM_FORMS": 1000,
}  # fmt: skip


def model_form(model_id, **changes):
    model = CatalogModel.objects.get(id=model_id)
    form = {
        "display_name": model.display_name, "provider": model.provider, "multiplier": str(model.multiplier),
        "min_tier": model.min_tier_id, "fallback": model.fallback_id or "", "is_active": "on" if model.is_active else "",
    }  # fmt: skip
    form.update(changes)
    return {k: v for k, v in form.items() if v != ""}


def test_tier_default_the_tier_may_not_use_is_refused_on_the_form(admin_client, catalog):
    response = admin_client.post("/admin/routing/tier/m1/change/", {**TIER_FORM, "default_model": "claude-opus-4-6"})
    assert response.status_code == 200  # the form again, with the error
    assert "claude-opus-4-6 is the default model of m1, which may not use it." in response.content.decode()
    assert Tier.objects.get(slug="m1").default_model_id == "claude-haiku-4-5"


def test_valid_tier_edit_is_saved(admin_client, catalog):
    response = admin_client.post("/admin/routing/tier/m1/change/", {**TIER_FORM, "max_tokens": 2048})
    assert response.status_code == 302
    assert Tier.objects.get(slug="m1").max_tokens == 2048


def test_multiplier_edit_is_saved_and_negative_refused(admin_client, catalog):
    response = admin_client.post("/admin/routing/catalogmodel/claude-haiku-4-5/change/", model_form("claude-haiku-4-5", multiplier="2"))
    assert response.status_code == 302
    from routing.snapshot import get_rules

    assert str(get_rules().lookup("claude-haiku-4-5").multiplier.normalize()) == "2"
    response = admin_client.post("/admin/routing/catalogmodel/ollama%2Fmistral/change/", model_form("ollama/mistral", multiplier="-1"))
    assert response.status_code == 200
    assert CatalogModel.objects.get(id="ollama/mistral").multiplier == 0


def test_deactivating_a_default_model_is_refused(admin_client, catalog):
    response = admin_client.post("/admin/routing/catalogmodel/claude-haiku-4-5/change/", model_form("claude-haiku-4-5", is_active=""))
    assert response.status_code == 200
    assert "inactive, but it is the default model of m1" in response.content.decode()
    assert CatalogModel.objects.get(id="claude-haiku-4-5").is_active


@pytest.mark.parametrize("path", ["/admin/agents/run/", "/admin/billing/ledgerentry/", "/admin/billing/usageperiod/", "/admin/routing/tier/", "/admin/routing/catalogmodel/", "/admin/accounts/apikey/", "/admin/billing/plan/"])
def test_admin_lists_render(admin_client, catalog, path):
    assert admin_client.get(path).status_code == 200


def test_runs_and_ledger_cannot_be_added_in_the_admin(admin_client, catalog):
    assert admin_client.get("/admin/agents/run/add/").status_code == 403
    assert admin_client.get("/admin/billing/ledgerentry/add/").status_code == 403


def test_deleting_an_allow_rule_a_default_relies_on_is_refused(admin_client, catalog):
    from routing.models import RuleEffect, TierModelRule

    rule = TierModelRule.objects.create(tier_id="access", model_id="claude-haiku-4-5", effect=RuleEffect.ALLOW)
    Tier.objects.filter(slug="access").update(default_model_id="claude-haiku-4-5")
    form = {
        **TIER_FORM, "name": "Access", "rank": 0, "monthly_token_quota": 0, "monthly_run_quota": 50,
        "default_model": "claude-haiku-4-5", "rules-TOTAL_FORMS": 1, "rules-INITIAL_FORMS": 1,
        "rules-0-id": rule.pk, "rules-0-tier": "access", "rules-0-model": "claude-haiku-4-5", "rules-0-effect": "allow",
        "rules-0-DELETE": "on",
    }  # fmt: skip
    response = admin_client.post("/admin/routing/tier/access/change/", form)
    assert response.status_code == 200
    assert "Cannot delete the rule" in response.content.decode()
    assert TierModelRule.objects.filter(pk=rule.pk).exists()
