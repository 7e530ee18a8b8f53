"""The user's plan, the per-period counters and the append-only ledger.

Counters are rows updated with conditional F() expressions (billing.services), so admission and
GET /usage never sum over the ledger. The ledger has exactly one row per billed run."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from audit.tracking import AuditedModel


class Plan(AuditedModel):
    audit_masked_fields = ("alert_webhook_secret",)
    audit_masked_url_fields = ("alert_webhook_url",)
    audit_ignored_fields = ("updated_at",)

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="plan")
    tier = models.ForeignKey("routing.Tier", on_delete=models.PROTECT, related_name="plans")
    token_quota_override = models.BigIntegerField(
        null=True, blank=True, help_text="Replaces the tier's monthly token quota."
    )
    run_quota_override = models.IntegerField(
        null=True, blank=True, help_text="Replaces the tier's monthly run quota."
    )
    # CONTRACT section 11: a number replaces the tier's figure; `..._unlimited` lifts the limit.
    requests_per_minute_override = models.PositiveIntegerField(
        null=True, blank=True, help_text="Replaces the tier's requests per minute."
    )
    requests_per_minute_unlimited = models.BooleanField(
        default=False, help_text="No requests-per-minute limit, whatever the tier's."
    )
    max_concurrent_runs_override = models.PositiveIntegerField(
        null=True, blank=True, help_text="Replaces the tier's max concurrent runs."
    )
    max_concurrent_runs_unlimited = models.BooleanField(
        default=False, help_text="No concurrency limit, whatever the tier's."
    )
    alert_webhook_url = models.URLField(
        blank=True, default="", help_text="Quota alerts are POSTed here, signed."
    )
    alert_webhook_secret = models.CharField(max_length=64, blank=True, default="", editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                name="plan_token_override_gte_0",
                condition=Q(token_quota_override__gte=0) | Q(token_quota_override__isnull=True),
            ),
            models.CheckConstraint(
                name="plan_run_override_gte_0",
                condition=Q(run_quota_override__gte=0) | Q(run_quota_override__isnull=True),
            ),
            models.CheckConstraint(
                name="plan_rpm_override_xor_unlimited",
                condition=Q(requests_per_minute_override__isnull=True)
                | Q(requests_per_minute_unlimited=False),
            ),
            models.CheckConstraint(
                name="plan_concurrency_override_xor_unlimited",
                condition=Q(max_concurrent_runs_override__isnull=True)
                | Q(max_concurrent_runs_unlimited=False),
            ),
        ]

    def __str__(self):
        return f"{self.user} on {self.tier_id}"

    def clean(self):
        from django.core.exceptions import ValidationError

        for limit in ("requests_per_minute", "max_concurrent_runs"):
            if getattr(self, f"{limit}_unlimited") and getattr(self, f"{limit}_override") is not None:
                raise ValidationError({f"{limit}_override": "Leave it empty when the limit is lifted."})


class Throttle(models.Model):
    """A user's live admission counters (CONTRACT section 11): the runs admitted and not yet settled,
    and the minute limit's token bucket. One row per user, not per period: a run may outlive its
    month. Written only by statements that add in the database (billing.statements), never by a
    form, so it is a row of its own rather than columns of the audited, admin-edited Plan."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    active_runs = models.IntegerField(default=0)  # queued or executing: admitted, not settled
    # The minute bucket (billing.throttle): runs drawn and not yet refilled, as of bucket_at.
    bucket_used = models.FloatField(default=0)
    bucket_at = models.DateTimeField(null=True, blank=True)  # None: never drawn from, so full

    class Meta:
        constraints = [
            models.CheckConstraint(name="throttle_active_runs_gte_0", condition=Q(active_runs__gte=0)),
        ]

    def __str__(self):
        return f"{self.user_id}: {self.active_runs} active"


class KeyUsage(models.Model):
    """An API key's counters for one UTC month: its runs, billed and reserved tokens (the key's
    monthly_token_limit, CONTRACT section 10, and the `by_key` lines of GET /usage)."""

    key = models.ForeignKey("accounts.ApiKey", on_delete=models.CASCADE, related_name="+", db_index=False)
    period = models.DateField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    runs = models.IntegerField(default=0)
    tokens_used = models.BigIntegerField(default=0)
    tokens_reserved = models.BigIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["user", "period"])]
        constraints = [
            models.UniqueConstraint(fields=["key", "period"], name="one_key_usage_row_per_period"),
            models.CheckConstraint(
                name="key_usage_gte_0", condition=Q(runs__gte=0, tokens_used__gte=0, tokens_reserved__gte=0)
            ),
        ]

    def __str__(self):
        return f"{self.key_id} {self.period:%Y-%m}"


class UsagePeriod(models.Model):
    """A user's counters for one UTC calendar month (`period` is its first day)."""

    # Each user foreign key here leads a unique constraint or index, which serves its lookups.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_periods", db_index=False
    )
    period = models.DateField()
    tokens_used = models.BigIntegerField(default=0)  # billed tokens of settled runs
    tokens_reserved = models.BigIntegerField(default=0)  # worst cases of admitted, unsettled runs
    runs_used = models.IntegerField(default=0)  # admitted runs

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "period"], name="one_usage_row_per_user_period"),
            models.CheckConstraint(name="usage_tokens_used_gte_0", condition=Q(tokens_used__gte=0)),
            models.CheckConstraint(name="usage_tokens_reserved_gte_0", condition=Q(tokens_reserved__gte=0)),
            models.CheckConstraint(name="usage_runs_used_gte_0", condition=Q(runs_used__gte=0)),
        ]

    def __str__(self):
        return f"{self.user} {self.period:%Y-%m}"


class ModelUsage(models.Model):
    """Per model that actually ran: the `by_model` lines of GET /usage, kept as counters."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    period = models.DateField()
    model = models.CharField(max_length=200)
    runs = models.IntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    billed_tokens = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["model"]
        constraints = [
            models.UniqueConstraint(fields=["user", "period", "model"], name="one_model_usage_row"),
            models.CheckConstraint(
                name="model_usage_gte_0",
                condition=Q(runs__gte=0, input_tokens__gte=0, output_tokens__gte=0, billed_tokens__gte=0),
            ),
        ]

    def __str__(self):
        return f"{self.user_id} {self.period:%Y-%m} {self.model}"


class LedgerEntry(models.Model):
    """What one run was billed. Append-only; the unique run makes a second settlement impossible."""

    run = models.OneToOneField("runs.Run", on_delete=models.PROTECT, related_name="ledger_entry")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    period = models.DateField()
    model = models.CharField(max_length=200)
    input_tokens = models.BigIntegerField()
    output_tokens = models.BigIntegerField()
    multiplier = models.DecimalField(max_digits=12, decimal_places=4)
    billed_tokens = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "period"])]
        constraints = [
            models.CheckConstraint(
                name="ledger_figures_gte_0",
                condition=Q(
                    input_tokens__gte=0, output_tokens__gte=0, multiplier__gte=0, billed_tokens__gte=0
                ),
            ),
        ]

    def __str__(self):
        return f"run {self.run_id}: {self.billed_tokens} tokens"


class Alert(models.Model):
    """A user's billed tokens or runs crossed a share of a monthly limit. At most one per user,
    period, quota and threshold: the unique constraint, not a check in code, makes it exactly once."""

    class Quota(models.TextChoices):
        TOKENS = "tokens"
        RUNS = "runs"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alerts", db_index=False
    )
    period = models.DateField()
    quota = models.CharField(max_length=8, choices=Quota.choices)
    threshold = models.PositiveSmallIntegerField()  # percent of the limit: 80 or 100
    used = models.BigIntegerField()  # the figure that crossed it
    limit = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Webhook delivery (billing.tasks.deliver_alert); untouched when the user has no webhook.
    delivery_attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_delivery_status = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "period", "quota", "threshold"], name="one_alert_per_threshold"
            ),
            models.CheckConstraint(name="alert_quota_known", condition=Q(quota__in=["tokens", "runs"])),
        ]

    def __str__(self):
        return f"{self.user} {self.period:%Y-%m} {self.quota} {self.threshold}%"


# The agent or key column of a UsageDay line that has none (a run by an agent since deleted, or one
# not admitted by a key): a unique line needs a value, and NULLs are never equal in a unique index.
NO_ID = uuid.UUID(int=0)


class UsageDay(models.Model):
    """A user's counters for one UTC day, model, agent and key: the rows GET /usage/history sums.
    `runs` counts runs admitted (at admission, under the model admitted); the token figures are
    what was billed (at settlement, under the model that ran), both on the run's creation day, so
    a month's sums equal its UsagePeriod and ModelUsage rows. Agent and key are plain ids, not
    foreign keys: the history outlives a deleted agent, and billing sits below both apps."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    model = models.CharField(max_length=200)
    agent_id = models.UUIDField(default=NO_ID)
    key_id = models.UUIDField(default=NO_ID)
    runs = models.IntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    billed_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # Leads with (user, day): it also serves the history's range reads.
            models.UniqueConstraint(
                fields=["user", "day", "model", "agent_id", "key_id"], name="one_usage_day_line"
            ),
            models.CheckConstraint(
                name="usage_day_gte_0",
                condition=Q(runs__gte=0, input_tokens__gte=0, output_tokens__gte=0, billed_tokens__gte=0),
            ),
        ]

    def __str__(self):
        return f"{self.user_id} {self.day} {self.model}"
