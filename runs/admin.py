from django.contrib import admin

from billing.admin_filters import PeriodFilter, model_filter, tier_filter
from maschina.admin import ReadOnlyAdmin

from .models import Run


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "user",
        "status",
        "model",
        "tier",
        "period",
        "billed_tokens",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", tier_filter("tier"), model_filter("catalog_model"), PeriodFilter]
    list_select_related = ["user"]
    search_fields = ["id", "user__username", "model"]
    show_full_result_count = False  # one COUNT(*) over the runs per page is enough


# The admin's home page lists the dashboards (runs.admin_views) above the apps.
admin.site.index_template = "admin/maschina_index.html"
