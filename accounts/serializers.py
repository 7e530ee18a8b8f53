"""The key object of CONTRACT section 10 and the body of POST /keys."""

from django.utils import timezone
from rest_framework import serializers

from maschina.fields import BIGINT_MAX, KnownFieldsOnly, StrictCharField, StrictIntegerField
from routing.access import model_list_problem
from routing.snapshot import get_rules


class KeySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The secret's first 12 characters.")
    models = serializers.ListField(child=serializers.CharField(), source="allowed_models", allow_null=True)
    monthly_token_limit = serializers.IntegerField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class KeyCreatedSerializer(KeySerializer):
    key = serializers.CharField(help_text="The secret (msk_live_…), shown in this answer only.")


class ModelListField(serializers.Field):
    """null, or a non-empty list of catalog ids and patterns, kept in the order given without repeats."""

    catalog_model_list = True  # its schema: routing.schema

    def to_internal_value(self, data):
        if data is None:
            return None
        problem = model_list_problem(get_rules(), data)
        if problem:
            raise serializers.ValidationError(problem)
        return list(dict.fromkeys(data))

    def to_representation(self, value):
        return value


class KeyCreateSerializer(KnownFieldsOnly):
    name = StrictCharField(min_length=1, max_length=100)
    models = ModelListField(required=False, allow_null=True, default=None)
    monthly_token_limit = StrictIntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=BIGINT_MAX
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate_name(self, value):
        if "\x00" in value:
            raise serializers.ValidationError("Must not contain NUL (U+0000) characters.")
        return value
