"""Seeds the tiers and the model catalog of CONTRACT section 4. After this, they are data: operators
edit them in the admin."""

from decimal import Decimal

from django.db import migrations

TIERS = [
    # slug, name, rank, tokens/month, runs/month, default model, quota exempt
    ("access", "Access", 0, 0, 50, "ollama/llama3.2", False),
    ("m1", "M1", 1, 500_000, 500, "claude-haiku-4-5", False),
    ("m5", "M5", 2, 2_000_000, 2_000, "claude-sonnet-4-6", False),
    ("m10", "M10", 3, 10_000_000, 10_000, "claude-opus-4-6", False),
    ("teams", "Teams", 4, 50_000_000, 50_000, "claude-sonnet-4-6", False),
    ("enterprise", "Enterprise", 5, None, None, "claude-opus-4-6", False),
    ("internal", "Internal", 5, None, None, "claude-opus-4-6", True),
]

MODELS = [
    # id, display name, provider, multiplier, min tier, fallback
    ("claude-haiku-4-5", "Claude Haiku 4.5", "anthropic", "1", "m1", None),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5 (pinned)", "anthropic", "1", "m1", None),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5", "anthropic", "3", "m5", "claude-haiku-4-5"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "anthropic", "3", "m5", "claude-haiku-4-5"),
    ("claude-opus-4-5", "Claude Opus 4.5", "anthropic", "15", "m10", "claude-sonnet-4-6"),
    ("claude-opus-4-6", "Claude Opus 4.6", "anthropic", "15", "m10", "claude-sonnet-4-6"),
    ("ollama/llama3.2", "Llama 3.2 (local)", "ollama", "0", "access", None),
    ("ollama/llama3.1", "Llama 3.1 (local)", "ollama", "0", "access", None),
    ("ollama/mistral", "Mistral (local)", "ollama", "0", "access", None),
    ("ollama/*", "Any local Ollama model", "ollama", "0", "access", None),
]


def seed(apps, schema_editor):
    Tier = apps.get_model("routing", "Tier")
    CatalogModel = apps.get_model("routing", "CatalogModel")
    RulesRevision = apps.get_model("routing", "RulesRevision")
    for slug, name, rank, tokens, runs, _default, exempt in TIERS:
        Tier.objects.create(
            slug=slug, name=name, rank=rank, monthly_token_quota=tokens, monthly_run_quota=runs,
            quota_exempt=exempt, max_tokens=4096, max_timeout_secs=3600,
        )  # fmt: skip
    for model_id, display, provider, multiplier, min_tier, _fallback in MODELS:
        CatalogModel.objects.create(
            id=model_id,
            display_name=display,
            provider=provider,
            multiplier=Decimal(multiplier),
            min_tier_id=min_tier,
        )
    for model_id, *_, fallback in MODELS:
        if fallback:
            CatalogModel.objects.filter(id=model_id).update(fallback_id=fallback)
    for slug, *_, default, _exempt in TIERS:
        Tier.objects.filter(slug=slug).update(default_model_id=default)
    RulesRevision.objects.update_or_create(id=1, defaults={"value": 1})


class Migration(migrations.Migration):
    dependencies = [("routing", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
