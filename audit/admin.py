import json

from django.contrib import admin
from django.utils.html import format_html

from maschina.admin import ReadOnlyAdmin

from .models import ChangeRecord


@admin.register(ChangeRecord)
class ChangeRecordAdmin(ReadOnlyAdmin):
    """Visible to staff, editable by no one (the database refuses it too)."""

    list_display = ["at", "actor", "source", "action", "object_type", "object_id", "changes"]
    list_filter = ["source", "action", "object_type"]
    search_fields = ["object_id", "actor"]
    date_hierarchy = "at"
    fields = ["at", "actor", "source", "action", "object_type", "object_id", "changes", "before_json", "after_json"]
    readonly_fields = fields

    @admin.display(description="changed fields")
    def changes(self, obj):
        if obj.action != "update":
            return "—"
        return ", ".join(f"{f}: {(obj.before or {}).get(f)!r} → {(obj.after or {}).get(f)!r}" for f in obj.changed_fields)

    @admin.display(description="before")
    def before_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.before, indent=2, sort_keys=True))

    @admin.display(description="after")
    def after_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.after, indent=2, sort_keys=True))
