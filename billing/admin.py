from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import models

from maschina.admin import ReadOnlyAdmin

from .admin_filters import PeriodFilter, model_filter, tier_filter
from .models import Alert, KeyUsage, LedgerEntry, ModelUsage, Plan, Throttle, UsagePeriod
from .webhook_targets import TargetRefused, url_validate
from .webhooks import webhook_enqueue, webhook_set


class PlanForm(forms.ModelForm):
    alert_webhook_url = forms.URLField(
        required=False, assume_scheme="https", help_text=Plan._meta.get_field("alert_webhook_url").help_text
    )

    class Meta:
        model = Plan
        # Every field, as the admin's own form has (fields other helpers add to Plan included).
        fields = "__all__"  # noqa: DJ007

    def clean_alert_webhook_url(self):  # where a webhook may go: billing.webhook_targets
        url = self.cleaned_data["alert_webhook_url"]
        if url and "alert_webhook_url" in self.changed_data:
            try:
                url_validate(url)
            except TargetRefused as refused:
                raise ValidationError(str(refused))
        return url


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    form = PlanForm
    list_display = [
        "user",
        "tier",
        "token_quota_override",
        "run_quota_override",
        "requests_per_minute_override",
        "max_concurrent_runs_override",
        "updated_at",
    ]
    list_filter = ["tier"]
    list_select_related = ["user", "tier"]
    search_fields = ["user__username", "user__email"]
    autocomplete_fields = ["user"]
    readonly_fields = ["alert_webhook_secret"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if "alert_webhook_url" in form.changed_data:
            webhook_set(plan=obj, url=obj.alert_webhook_url)  # draws the signing secret


@admin.register(UsagePeriod)
class UsagePeriodAdmin(ReadOnlyAdmin):
    list_display = ["user", "period", "tokens_used", "tokens_reserved", "runs_used"]
    list_filter = [PeriodFilter]
    list_select_related = ["user"]
    search_fields = ["user__username"]


@admin.register(ModelUsage)
class ModelUsageAdmin(ReadOnlyAdmin):
    list_display = ["user", "period", "model", "runs", "input_tokens", "output_tokens", "billed_tokens"]
    list_filter = [PeriodFilter]
    list_select_related = ["user"]
    search_fields = ["user__username", "model"]


@admin.register(Throttle)
class ThrottleAdmin(ReadOnlyAdmin):
    list_display = ["user", "active_runs", "bucket_used", "bucket_at"]
    list_select_related = ["user"]
    search_fields = ["user__username"]


@admin.register(KeyUsage)
class KeyUsageAdmin(ReadOnlyAdmin):
    list_display = ["key", "user", "period", "runs", "tokens_used", "tokens_reserved"]
    list_filter = [PeriodFilter]
    list_select_related = ["user", "key"]
    search_fields = ["user__username", "key__name"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "user",
        "period",
        "model",
        "input_tokens",
        "output_tokens",
        "multiplier",
        "billed_tokens",
        "run",
    ]
    list_filter = [PeriodFilter, tier_filter("run__tier"), model_filter("run__catalog_model")]
    list_select_related = ["user", "run"]
    show_full_result_count = False  # one COUNT(*) over the ledger per page is enough
    search_fields = ["user__username", "run__id", "model"]


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "user",
        "period",
        "quota",
        "threshold",
        "used",
        "limit",
        "delivered_at",
        "delivery_attempts",
        "last_delivery_status",
    ]
    list_filter = ["quota", "threshold", PeriodFilter]
    list_select_related = ["user"]
    search_fields = ["user__username"]
    actions = ["resend"]

    @admin.action(description="Send the webhook again for undelivered alerts")
    def resend(self, request, queryset):
        for alert_id in queryset.filter(delivered_at__isnull=True).values_list("id", flat=True):
            webhook_enqueue(alert_id)
