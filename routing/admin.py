import threading

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from .access import Rules, access_of
from .invariants import validate_tier_rules
from .models import CatalogModel, Tier, TierModelRule
from .protection import deletion_refusal
from .snapshot import build_rules, current_revision

_fresh: dict[str, Rules | None] = {"rules": None}
_fresh_lock = threading.Lock()


def fresh_rules() -> Rules:
    """The rules as committed now (not this process's snapshot, which may lag behind an edit just
    saved), rebuilt only when the revision moved."""
    revision = current_revision()
    with _fresh_lock:
        rules = _fresh["rules"]
        if rules is None or rules.revision != revision:
            rules = _fresh["rules"] = build_rules(revision)
        return rules


def access_table(heading: str, rows) -> str:
    """(name, link or None, Access) rows as the admin's table, each row tagged for the browser test."""
    body = format_html_join(
        "",
        '<tr class="access-row" data-name="{}" data-allowed="{}"><td>{}</td>'
        '<td><strong style="color:{}">{}</strong></td><td>{}</td></tr>',
        (
            (
                name,
                "yes" if access.allowed else "no",
                format_html('<a href="{}">{}</a>', link, name) if link else name,
                "#2a7d2a" if access.allowed else "#ba2121",
                "may use" if access.allowed else "may not",
                access.reason,
            )
            for name, link, access in rows
        ),
    )
    return format_html(
        '<table class="access-table"><thead><tr><th>{}</th><th>access</th><th>why</th></tr></thead>'
        "<tbody>{}</tbody></table>",
        heading,
        body,
    )


class RefuseDeletingReferencedRows:
    """The delete page (one row or the bulk action) lists rows that runs reference as protected, so
    Django shows why and offers no confirm button; routing.protection refuses it in code as well."""

    def get_deleted_objects(self, objs, request):
        # A mixin: the ModelAdmin it is mixed into has the method.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(  # type: ignore[misc]
            objs, request
        )
        refusals = [refusal for refusal in map(deletion_refusal, objs) if refusal]
        return deleted, counts, perms_needed, [*protected, *refusals]


class TierModelRuleFormSet(BaseInlineFormSet):
    """The tier's form and its rules are saved together, so they are checked together: the catalog as it
    would be with the tier's new values and its rules as submitted (added, changed and deleted)."""

    def clean(self):
        super().clean()
        if any(self.errors) or not self.instance.default_model_id:
            return  # the forms already say what is wrong
        rules = {}
        for form in self.forms:
            if not form.has_changed() and not form.instance.pk:
                continue  # an empty extra row
            if form in self.deleted_forms:
                continue
            data = form.cleaned_data
            rules[data["model"].pk] = data["effect"]
        try:
            validate_tier_rules(self.instance, rules)
        except ValidationError as exc:
            raise ValidationError(
                [f"Cannot save the tier with these rules: {message}" for message in exc.messages]
            )


class TierModelRuleInline(admin.TabularInline):
    model = TierModelRule
    formset = TierModelRuleFormSet
    extra = 0
    autocomplete_fields = ["model"]


@admin.register(Tier)
class TierAdmin(RefuseDeletingReferencedRows, admin.ModelAdmin):
    list_display = [
        "slug",
        "name",
        "rank",
        "monthly_token_quota",
        "monthly_run_quota",
        "default_model",
        "max_tokens",
        "max_timeout_secs",
        "requests_per_minute",
        "max_concurrent_runs",
        "quota_exempt",
    ]
    list_select_related = ["default_model"]
    search_fields = ["slug", "name"]
    ordering = ["rank", "slug"]
    inlines = [TierModelRuleInline]

    def get_readonly_fields(self, request, obj=None):
        return ["slug", "model_access"] if obj else []

    @admin.display(description="Models this tier may use")
    def model_access(self, tier):
        """Every catalog row, decided for this tier by the gate the API uses (routing.access)."""
        rules = fresh_rules()
        info = rules.tiers.get(tier.slug)
        if info is None:
            return "-"
        rows = [
            (
                entry.id,
                reverse("admin:routing_catalogmodel_change", args=[quote(entry.id)]),
                access_of(rules, info, entry),
            )
            for entry in sorted(rules.models.values(), key=lambda m: m.id)
        ]
        return access_table("model", rows)


@admin.register(CatalogModel)
class CatalogModelAdmin(RefuseDeletingReferencedRows, admin.ModelAdmin):
    list_display = ["id", "display_name", "provider", "multiplier", "min_tier", "fallback", "is_active"]
    list_filter = ["provider", "is_active", "min_tier"]
    list_select_related = ["min_tier", "fallback"]
    search_fields = ["id", "display_name"]

    def get_list_display(self, request):
        return [*self.list_display, "tiers_allowed"]

    def get_readonly_fields(self, request, obj=None):
        return ["id", "tier_access"] if obj else []

    @admin.display(description="tiers that may use it")
    def tiers_allowed(self, model):
        rules = fresh_rules()
        entry = rules.models.get(model.id)
        if entry is None:
            return "-"
        tiers = sorted(rules.tiers.values(), key=lambda t: (t.rank, t.slug))
        allowed = [t.slug for t in tiers if access_of(rules, t, entry).allowed]
        return format_html('<span class="tiers-allowed">{}</span>', ", ".join(allowed) or "none")

    @admin.display(description="Tiers that may use it")
    def tier_access(self, model):
        """Every tier, decided for this model by the gate the API uses (routing.access)."""
        rules = fresh_rules()
        entry = rules.models.get(model.id)
        if entry is None:
            return "-"
        tiers = sorted(rules.tiers.values(), key=lambda t: (t.rank, t.slug))
        rows = [
            (t.slug, reverse("admin:routing_tier_change", args=[quote(t.slug)]), access_of(rules, t, entry))
            for t in tiers
        ]
        return access_table("tier", rows)
