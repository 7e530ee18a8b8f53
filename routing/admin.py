from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from .invariants import validate_rule_delete
from .models import CatalogModel, Tier, TierModelRule
from .protection import deletion_refusal


class RefuseDeletingReferencedRows:
    """The delete page (one row or the bulk action) lists rows that runs reference as protected, so
    Django shows why and offers no confirm button; routing.protection refuses it in code as well."""

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        refusals = [refusal for refusal in map(deletion_refusal, objs) if refusal]
        return deleted, counts, perms_needed, [*protected, *refusals]


class TierModelRuleFormSet(BaseInlineFormSet):
    """Deleting a rule can break an invariant too (an allow rule a tier's default relies on)."""

    def clean(self):
        super().clean()
        for form in self.deleted_forms:
            if form.instance.pk:
                try:
                    validate_rule_delete(form.instance)
                except ValidationError as exc:
                    raise ValidationError(f"Cannot delete the rule {form.instance}: {' '.join(exc.messages)}")


class TierModelRuleInline(admin.TabularInline):
    model = TierModelRule
    formset = TierModelRuleFormSet
    extra = 0
    autocomplete_fields = ["model"]


@admin.register(Tier)
class TierAdmin(RefuseDeletingReferencedRows, admin.ModelAdmin):
    list_display = ["slug", "name", "rank", "monthly_token_quota", "monthly_run_quota", "default_model", "max_tokens", "max_timeout_secs", "quota_exempt"]
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
