from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


def normalized_multiplier(value) -> str:
    """Decimal -> "3", "0.5", "15", "0" (no exponent, no trailing zeros)."""
    return format(value.normalize(), "f")


class TierSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    rank = serializers.IntegerField()
    monthly_token_quota = serializers.IntegerField(allow_null=True)
    monthly_run_quota = serializers.IntegerField(allow_null=True)
    default_model = serializers.CharField(allow_null=True)
    max_tokens = serializers.IntegerField()
    max_timeout_secs = serializers.IntegerField()
    requests_per_minute = serializers.IntegerField(allow_null=True)
    max_concurrent_runs = serializers.IntegerField(allow_null=True)


class CatalogModelSerializer(serializers.Serializer):
    """A catalog row as the caller sees it; `allowed` and `default` come from the context."""

    id = serializers.CharField()
    display_name = serializers.CharField()
    provider = serializers.CharField()
    multiplier = serializers.SerializerMethodField()
    min_tier = serializers.CharField()
    is_local = serializers.BooleanField()
    is_pattern = serializers.BooleanField()
    fallback = serializers.CharField(allow_null=True)
    allowed = serializers.SerializerMethodField()
    default = serializers.SerializerMethodField()

    @extend_schema_field({"type": "string", "example": "3"})
    def get_multiplier(self, entry) -> str:
        return normalized_multiplier(entry.multiplier)

    def get_allowed(self, entry) -> bool:
        return entry.id in self.context["allowed"]

    # The `default` field's method; it shadows Field.get_default, which only a nested serializer calls.
    def get_default(self, entry) -> bool:  # type: ignore[override]
        return entry.id == self.context["default"]
