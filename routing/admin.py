from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from .invariants import validate_tier_rules
from .models import CatalogModel, Tier, TierModelRule
from .protection import deletion_refusal


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
        return ["slug"] if obj else []


@admin.register(CatalogModel)
class CatalogModelAdmin(RefuseDeletingReferencedRows, admin.ModelAdmin):
    list_display = ["id", "display_name", "provider", "multiplier", "min_tier", "fallback", "is_active"]
    list_filter = ["provider", "is_active", "min_tier"]
    list_select_related = ["min_tier", "fallback"]
    search_fields = ["id", "display_name"]

    def get_readonly_fields(self, request, obj=None):
        return ["id"] if obj else []
