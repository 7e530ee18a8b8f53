"""The gate (routing.access) over the seeded catalog: every tier x every model, patterns, unknown
and inactive ids, resolution order, allow/deny rules. Expectations come from CONTRACT section 4's
tables, written out here, not from the code under test."""

from decimal import Decimal

import pytest

from routing.access import Allowed, Denied, decide, required_tier, usable_fallback
from routing.models import CatalogModel, RuleEffect, Tier, TierModelRule
from routing.snapshot import build_rules, get_rules

pytestmark = pytest.mark.django_db

TIER_RANK = {"access": 0, "m1": 1, "m5": 2, "m10": 3, "teams": 4, "enterprise": 5, "internal": 5}
MODEL_MIN_TIER = {
    "claude-haiku-4-5": "m1",
    "claude-haiku-4-5-20251001": "m1",
    "claude-sonnet-4-5": "m5",
    "claude-sonnet-4-6": "m5",
    "claude-opus-4-5": "m10",
    "claude-opus-4-6": "m10",
    "ollama/llama3.2": "access",
    "ollama/llama3.1": "access",
    "ollama/mistral": "access",
    "ollama/qwen2.5:7b": "access",  # through the ollama/* pattern
}
DEFAULTS = {
    "access": "ollama/llama3.2",
    "m1": "claude-haiku-4-5",
    "m5": "claude-sonnet-4-6",
    "m10": "claude-opus-4-6",
    "teams": "claude-sonnet-4-6",
    "enterprise": "claude-opus-4-6",
    "internal": "claude-opus-4-6",
}
MULTIPLIERS = {
    "claude-haiku-4-5": "1",
    "claude-sonnet-4-6": "3",
    "claude-opus-4-6": "15",
    "ollama/llama3.2": "0",
}


@pytest.fixture
def rules(catalog):
    return get_rules()


@pytest.mark.parametrize("tier", TIER_RANK)
@pytest.mark.parametrize("model", MODEL_MIN_TIER)
def test_every_tier_and_model(rules, tier, model):
    decision = decide(rules, rules.tiers[tier], model)
    if TIER_RANK[tier] >= TIER_RANK[MODEL_MIN_TIER[model]]:
        assert isinstance(decision, Allowed)
        assert decision.model_id == model
        assert decision.requested == model
    else:
        assert decision == Denied("model_not_allowed", model, rules.lookup(model), tier)
        assert required_tier(rules, rules.tiers[tier], decision.entry) == MODEL_MIN_TIER[model]


@pytest.mark.parametrize("tier", TIER_RANK)
def test_tier_default_is_used_when_nothing_is_asked(rules, tier):
    decision = decide(rules, rules.tiers[tier], None)
    assert isinstance(decision, Allowed)
    assert decision.model_id == DEFAULTS[tier]
    assert decision.requested is None


def test_seeded_multipliers_are_exact_decimals(rules):
    for model, multiplier in MULTIPLIERS.items():
        assert rules.lookup(model).multiplier == Decimal(multiplier)


def test_pattern_matches_any_local_model_and_keeps_the_asked_id(rules):
    decision = decide(rules, rules.tiers["access"], "ollama/qwen2.5:7b")
    assert isinstance(decision, Allowed)
    assert decision.model_id == "ollama/qwen2.5:7b"
    assert decision.entry.id == "ollama/*"
    assert decision.entry.multiplier == 0


@pytest.mark.parametrize(
    "model", ["gpt-4o", "ollama/", "ollama/*", "claude-haiku", "CLAUDE-HAIKU-4-5", "", "ollama*"]
)
def test_unknown_ids(rules, model):
    decision = decide(rules, rules.tiers["enterprise"], model or None)
    if model:
        assert decision == Denied("unknown_model", model, tier="enterprise")
    else:  # empty means "not asked": the tier default
        assert isinstance(decision, Allowed)


def test_exact_row_wins_over_pattern(catalog):
    CatalogModel.objects.create(
        id="ollama/special",
        display_name="Special",
        provider="ollama",
        multiplier=Decimal("0.5"),
        min_tier_id="m5",
    )
    rules = get_rules()
    assert rules.lookup("ollama/special").multiplier == Decimal("0.5")
    assert decide(rules, rules.tiers["access"], "ollama/special").code == "model_not_allowed"
    assert isinstance(decide(rules, rules.tiers["access"], "ollama/special2"), Allowed)


def test_longest_pattern_wins(catalog):
    CatalogModel.objects.create(
        id="ollama/big-*",
        display_name="Big local",
        provider="ollama",
        multiplier=Decimal("0.25"),
        min_tier_id="m1",
    )
    rules = get_rules()
    assert rules.lookup("ollama/big-llama").id == "ollama/big-*"
    assert rules.lookup("ollama/small").id == "ollama/*"


def test_inactive_model_is_unavailable(catalog):
    CatalogModel.objects.filter(id="claude-opus-4-5").update(is_active=False)
    rules = get_rules()
    decision = decide(rules, rules.tiers["enterprise"], "claude-opus-4-5")
    assert decision.code == "model_unavailable"


def test_allow_rule_below_min_tier_and_deny_rule_above(catalog):
    TierModelRule.objects.create(tier_id="access", model_id="claude-haiku-4-5", effect=RuleEffect.ALLOW)
    TierModelRule.objects.create(tier_id="m10", model_id="claude-opus-4-5", effect=RuleEffect.DENY)
    rules = get_rules()
    assert isinstance(decide(rules, rules.tiers["access"], "claude-haiku-4-5"), Allowed)
    assert decide(rules, rules.tiers["access"], "claude-haiku-4-5-20251001").code == "model_not_allowed"
    denied = decide(rules, rules.tiers["m10"], "claude-opus-4-5")
    assert denied.code == "model_not_allowed"
    # Denied at or above its min tier: the plan to name is the next one up that may use it.
    assert required_tier(rules, rules.tiers["m10"], denied.entry) == "teams"
    assert isinstance(decide(rules, rules.tiers["teams"], "claude-opus-4-5"), Allowed)


def test_fallback_only_when_the_tier_may_use_it(catalog):
    rules = get_rules()
    opus = rules.lookup("claude-opus-4-6")
    assert usable_fallback(rules, rules.tiers["m10"], opus).id == "claude-sonnet-4-6"
    TierModelRule.objects.create(tier_id="m10", model_id="claude-sonnet-4-6", effect=RuleEffect.DENY)
    rules = get_rules()
    assert usable_fallback(rules, rules.tiers["m10"], opus) is None
    assert usable_fallback(rules, rules.tiers["m1"], rules.lookup("claude-haiku-4-5")) is None


def test_snapshot_reloads_after_a_change_and_costs_no_query_when_warm(
    catalog, django_assert_num_queries, settings
):
    settings.RULES_REFRESH_SECS = 3600
    rules = get_rules()
    with django_assert_num_queries(0):
        for _ in range(100):
            decide(get_rules(), rules.tiers["m5"], "claude-sonnet-4-6")
    tier = Tier.objects.get(slug="m5")
    tier.max_tokens = 2048
    tier.save()
    # In a test the transaction never commits, so the local invalidation (on_commit) does not
    # fire; the revision check does, once the refresh interval is due.
    settings.RULES_REFRESH_SECS = 0
    assert get_rules().tiers["m5"].max_tokens == 2048


def test_build_rules_is_the_whole_catalog(catalog):
    rules = build_rules()
    assert set(rules.tiers) == set(TIER_RANK)
    assert set(rules.models) == set(MODEL_MIN_TIER) - {"ollama/qwen2.5:7b"} | {"claude-opus-4-5", "ollama/*"}


def test_decisions_are_remembered_only_for_catalog_ids_and_the_snapshots_own_tiers(rules):
    import dataclasses

    m1 = rules.tiers["m1"]
    first = decide(rules, m1, "claude-haiku-4-5")
    assert decide(rules, m1, "claude-haiku-4-5") is first and decide(rules, m1, None) is decide(
        rules, m1, None
    )
    for n in range(100):  # strings from request bodies: unknown ids, pattern matches
        decide(rules, m1, f"no-such-model-{n}")
        decide(rules, m1, f"ollama/llama-{n}")
    assert set(rules._decisions) == {("m1", "claude-haiku-4-5"), ("m1", None)}
    # A TierInfo of a caller's own making, under the same slug, is decided on its own terms.
    mine = dataclasses.replace(m1, default_model="claude-opus-4-5", rank=99)
    assert decide(rules, mine, None).model_id == "claude-opus-4-5" and isinstance(
        decide(rules, mine, None), Allowed
    )
    assert decide(rules, m1, None).model_id == m1.default_model
