from django.contrib import admin

from .models import LedgerEntry, ModelUsage, Plan, UsagePeriod


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["user", "tier", "token_quota_override", "run_quota_override", "updated_at"]
    list_filter = ["tier"]
    list_select_related = ["user", "tier"]
    search_fields = ["user__username", "user__email"]
    autocomplete_fields = ["user"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money records are written by services only; the admin shows them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsagePeriod)
class UsagePeriodAdmin(ReadOnlyAdmin):
    list_display = ["user", "period", "tokens_used", "tokens_reserved", "runs_used"]
    list_filter = ["period"]
    list_select_related = ["user"]
    search_fields = ["user__username"]


@admin.register(ModelUsage)
class ModelUsageAdmin(ReadOnlyAdmin):
    list_display = ["user", "period", "model", "runs", "input_tokens", "output_tokens", "billed_tokens"]
    list_filter = ["period", "model"]
    list_select_related = ["user"]
    search_fields = ["user__username", "model"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "user", "period", "model", "input_tokens", "output_tokens", "multiplier", "billed_tokens", "run"]
    list_filter = ["period", "model"]
    list_select_related = ["user", "run"]
    search_fields = ["user__username", "run__id", "model"]
