import json
from typing import cast

from django.apps import apps
from django.contrib import admin
from django.utils.html import format_html

from maschina.admin import ReadOnlyAdmin

from .models import ChangeRecord
from .tracking import AuditedModel


class AuditedModelFilter(admin.SimpleListFilter):
    """Choices from the audited models, not a DISTINCT over an ever-growing table."""

    title = "object type"
    parameter_name = "object_type"

    def lookups(self, request, model_admin):
        models = (m for m in apps.get_models() if issubclass(m, AuditedModel))
        return sorted((m._meta.label_lower, m._meta.verbose_name) for m in models)

    def queryset(self, request, queryset):
        return queryset.filter(object_type=self.value()) if self.value() else queryset


@admin.register(ChangeRecord)
class ChangeRecordAdmin(ReadOnlyAdmin):
    """Visible to staff, editable by no one (the database refuses it too)."""

    list_display = ["at", "actor", "source", "action", "object_type", "object_id", "changes"]
    list_filter = ["source", "action", AuditedModelFilter]
    search_fields = ["object_id", "actor"]
    show_full_result_count = False  # the table only grows: one COUNT(*) per page is enough
    fields = [
        "at",
        "actor",
        "source",
        "action",
        "object_type",
        "object_id",
        "changes",
        "before_json",
        "after_json",
    ]
    readonly_fields = cast(list[str], fields)  # every entry is a field name, no fieldset groups

    @admin.display(description="changed fields")
    def changes(self, obj):
        if obj.action != "update":
            return "—"
        return ", ".join(
            f"{f}: {(obj.before or {}).get(f)!r} → {(obj.after or {}).get(f)!r}" for f in obj.changed_fields
        )

    @admin.display(description="before")
    def before_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.before, indent=2, sort_keys=True))

    @admin.display(description="after")
    def after_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.after, indent=2, sort_keys=True))
