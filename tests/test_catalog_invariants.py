"""Invariants of CONTRACT section 4 that no edit may break: the cross-row ones in clean() (what the
admin's forms call), the single-row ones as database constraints."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from routing.models import CatalogModel, RuleEffect, Tier, TierModelRule

pytestmark = pytest.mark.django_db


def messages(exc):
    return " ".join(exc.value.messages)


def test_default_model_the_tier_may_not_use_is_rejected(catalog):
    tier = Tier.objects.get(slug="m1")
    tier.default_model_id = "claude-opus-4-6"
    with pytest.raises(ValidationError) as exc:
        tier.full_clean()
    assert "may not use it" in messages(exc)
    assert "default_model" in exc.value.message_dict


def test_default_model_cannot_be_a_pattern(catalog):
    tier = Tier.objects.get(slug="access")
    tier.default_model_id = "ollama/*"
    with pytest.raises(ValidationError, match="not the pattern"):
        tier.full_clean()


def test_valid_default_change_is_accepted(catalog):
    tier = Tier.objects.get(slug="m10")
    tier.default_model_id = "claude-haiku-4-5"
    tier.full_clean()


def test_deactivating_a_tier_default_is_rejected(catalog):
    model = CatalogModel.objects.get(id="claude-haiku-4-5")
    model.is_active = False
    with pytest.raises(ValidationError, match="inactive, but it is the default model of m1"):
        model.full_clean()


def test_raising_min_tier_above_a_default_users_tier_is_rejected(catalog):
    model = CatalogModel.objects.get(id="claude-sonnet-4-6")
    model.min_tier_id = "teams"
    with pytest.raises(ValidationError, match="default model of m5"):
        model.full_clean()


def test_fallback_dearer_than_its_model_is_rejected(catalog):
    haiku = CatalogModel.objects.get(id="claude-haiku-4-5")
    haiku.multiplier = Decimal("5")  # sonnet (3x) falls back to haiku
    with pytest.raises(ValidationError, match="costs more"):
        haiku.full_clean()
    sonnet = CatalogModel.objects.get(id="claude-sonnet-4-5")
    sonnet.fallback_id = "claude-opus-4-6"
    with pytest.raises(ValidationError, match="costs more"):
        sonnet.full_clean()


def test_fallback_cycle_is_rejected(catalog):
    CatalogModel.objects.filter(id="claude-opus-4-6").update(fallback_id="claude-opus-4-5")
    opus45 = CatalogModel.objects.get(id="claude-opus-4-5")
    opus45.fallback_id = "claude-opus-4-6"
    with pytest.raises(ValidationError, match="cycle"):
        opus45.full_clean()


def test_fallback_cannot_be_a_pattern(catalog):
    model = CatalogModel.objects.get(id="ollama/mistral")
    model.fallback_id = "ollama/*"
    with pytest.raises(ValidationError, match="not the pattern"):
        model.full_clean()


def test_pattern_star_only_at_the_end(catalog):
    model = CatalogModel(
        id="ollama/*x", display_name="x", provider="ollama", multiplier=0, min_tier_id="access"
    )
    with pytest.raises(ValidationError, match="single"):
        model.full_clean()


def test_deny_rule_on_a_tier_default_is_rejected(catalog):
    rule = TierModelRule(tier_id="m1", model_id="claude-haiku-4-5", effect=RuleEffect.DENY)
    with pytest.raises(ValidationError, match="may not use it"):
        rule.full_clean()
    TierModelRule(tier_id="m1", model_id="claude-opus-4-6", effect=RuleEffect.ALLOW).full_clean()


def test_negative_multiplier_rejected_by_form_and_by_database(catalog):
    model = CatalogModel.objects.get(id="ollama/mistral")
    model.multiplier = Decimal("-1")
    with pytest.raises(ValidationError) as exc:
        model.full_clean()
    assert "multiplier" in exc.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        CatalogModel.objects.filter(id="ollama/mistral").update(multiplier=Decimal("-0.5"))


@pytest.mark.parametrize(
    "field, value",
    [("monthly_token_quota", -1), ("monthly_run_quota", -5), ("max_tokens", 0), ("max_timeout_secs", 3601)],
)
def test_tier_figures_are_database_constraints(catalog, field, value):
    with pytest.raises(IntegrityError), transaction.atomic():
        Tier.objects.filter(slug="m1").update(**{field: value})


def test_one_rule_per_tier_and_model(catalog):
    TierModelRule.objects.create(tier_id="access", model_id="claude-haiku-4-5", effect=RuleEffect.ALLOW)
    with pytest.raises(IntegrityError), transaction.atomic():
        TierModelRule.objects.create(tier_id="access", model_id="claude-haiku-4-5", effect=RuleEffect.DENY)
