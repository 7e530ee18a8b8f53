"""List filters for the runs, ledger and usage pages whose choices come from the catalog and the
calendar, not from a DISTINCT over the table: with a million runs, a page must not scan them all."""

import datetime

from django.contrib import admin
from django.utils import timezone

from routing.snapshot import get_rules


class _ChoiceFilter(admin.SimpleListFilter):
    field = ""  # the lookup the chosen value filters on

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


def tier_filter(field: str) -> type[admin.SimpleListFilter]:
    class TierFilter(_ChoiceFilter):
        title = "tier"
        parameter_name = "tier"

        def lookups(self, request, model_admin):
            return [(t.slug, t.slug) for t in sorted(get_rules().tiers.values(), key=lambda t: t.rank)]

    TierFilter.field = field
    return TierFilter


def model_filter(field: str) -> type[admin.SimpleListFilter]:
    class ModelFilter(_ChoiceFilter):
        title = "catalog model"
        parameter_name = "catalog_model"

        def lookups(self, request, model_admin):
            return [(m, m) for m in sorted(get_rules().models)]

    ModelFilter.field = field
    return ModelFilter


class PeriodFilter(_ChoiceFilter):
    """The last twelve UTC months; older ones by URL (?period=YYYY-MM-01)."""

    title = "period"
    parameter_name = "period"
    field = "period"

    def lookups(self, request, model_admin):
        month = timezone.now().date().replace(day=1)
        months = []
        for _ in range(12):
            months.append((month.isoformat(), f"{month:%Y-%m}"))
            month = (month - datetime.timedelta(days=1)).replace(day=1)
        return months

    def queryset(self, request, queryset):
        raw = self.value()
        try:
            value = datetime.date.fromisoformat(raw) if raw else None
        except ValueError:
            return queryset.none()
        return queryset.filter(period=value) if value else queryset
