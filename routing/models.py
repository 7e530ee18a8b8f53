"""Tiers, the model catalog and per-tier rules: the data the gate decides from.

The billing multiplier of a model lives in CatalogModel.multiplier and nowhere else; a run copies
the figure it was billed at onto itself as a record, like a price on an invoice line."""

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from audit.tracking import AuditedModel


class Provider(models.TextChoices):
    ANTHROPIC = "anthropic", "Anthropic"
    OLLAMA = "ollama", "Ollama (local)"


LOCAL_PROVIDERS = frozenset({Provider.OLLAMA})
MAX_TIMEOUT_SECS = 3600


class Tier(AuditedModel):
    slug = models.SlugField(primary_key=True, max_length=32)
    name = models.CharField(max_length=64)
    rank = models.PositiveSmallIntegerField(
        help_text="Higher ranks may use every model whose min tier ranks at or below."
    )
    monthly_token_quota = models.BigIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Billed tokens per month; empty = unlimited.",
    )
    monthly_run_quota = models.IntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Runs per month; empty = unlimited.",
    )
    quota_exempt = models.BooleanField(
        default=False,
        help_text="Skip both quota checks whatever the limits or per-user overrides (internal use).",
    )
    default_model = models.ForeignKey(
        "routing.CatalogModel", on_delete=models.PROTECT, related_name="default_for_tiers", null=True
    )
    max_tokens = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    max_timeout_secs = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_TIMEOUT_SECS)]
    )
    # CONTRACT section 11; a plan's overrides take their place.
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Runs admitted per user in any 60 s; empty = unlimited."
    )
    max_concurrent_runs = models.PositiveIntegerField(
        null=True, blank=True, help_text="A user's runs queued or executing at once; empty = unlimited."
    )

    class Meta:
        ordering = ["rank", "slug"]
        constraints = [
            models.CheckConstraint(
                name="tier_token_quota_gte_0",
                condition=Q(monthly_token_quota__gte=0) | Q(monthly_token_quota__isnull=True),
            ),
            models.CheckConstraint(
                name="tier_run_quota_gte_0",
                condition=Q(monthly_run_quota__gte=0) | Q(monthly_run_quota__isnull=True),
            ),
            models.CheckConstraint(name="tier_max_tokens_gt_0", condition=Q(max_tokens__gt=0)),
            models.CheckConstraint(
                name="tier_max_timeout_in_range",
                condition=Q(max_timeout_secs__gt=0, max_timeout_secs__lte=MAX_TIMEOUT_SECS),
            ),
        ]

    def __str__(self):
        return self.slug

    def clean(self):
        from .invariants import validate_tier

        validate_tier(self)


class CatalogModel(AuditedModel):
    """One row of the model catalog. An id ending in '*' is a pattern matching any id with that prefix."""

    id = models.CharField(primary_key=True, max_length=200)
    display_name = models.CharField(max_length=200)
    provider = models.CharField(max_length=32, choices=Provider.choices)
    multiplier = models.DecimalField(
        max_digits=12, decimal_places=4, validators=[MinValueValidator(Decimal("0"))]
    )
    min_tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="+")
    fallback = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="fallback_for"
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["provider", "id"]
        verbose_name = "catalog model"
        constraints = [
            models.CheckConstraint(name="model_multiplier_gte_0", condition=Q(multiplier__gte=0)),
            models.CheckConstraint(name="model_fallback_not_self", condition=~Q(fallback=models.F("id"))),
            models.CheckConstraint(name="model_provider_known", condition=Q(provider__in=Provider.values)),
        ]

    def __str__(self):
        return self.id

    @property
    def is_pattern(self):
        return self.id.endswith("*")

    @property
    def is_local(self):
        return self.provider in LOCAL_PROVIDERS

    def clean(self):
        from .invariants import validate_model

        validate_model(self)


class RuleEffect(models.TextChoices):
    ALLOW = "allow", "Allow (even below the model's min tier)"
    DENY = "deny", "Deny (even at or above the model's min tier)"


class TierModelRule(AuditedModel):
    tier = models.ForeignKey(
        Tier, on_delete=models.CASCADE, related_name="rules", db_index=False
    )  # leads the unique (tier, model)
    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="tier_rules")
    effect = models.CharField(max_length=8, choices=RuleEffect.choices)

    class Meta:
        ordering = ["tier", "model"]
        constraints = [
            models.UniqueConstraint(fields=["tier", "model"], name="one_rule_per_tier_and_model"),
            models.CheckConstraint(name="rule_effect_known", condition=Q(effect__in=RuleEffect.values)),
        ]

    def __str__(self):
        return f"{self.tier_id}: {self.effect} {self.model_id}"

    def clean(self):
        from .invariants import validate_rule

        validate_rule(self)


class RulesRevision(models.Model):
    """A single counter bumped in the same transaction as every change to the rules, so each process
    can tell cheaply whether its in-memory snapshot is stale (routing.snapshot)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.CheckConstraint(name="single_rules_revision", condition=Q(id=1))]

    def __str__(self):
        return f"rules revision {self.value}"
