"""Serializer fields that take JSON types as they are: DRF's own would turn 123 into "123" and
"300" into 300, and a billing API should not guess what a client meant."""

from rest_framework import serializers


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


BIGINT_MAX = 2**63 - 1  # the largest value a BigIntegerField (PostgreSQL bigint) column holds


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "Must be an integer."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class KnownFieldsOnly(serializers.Serializer):
    """A request body whose fields the serializer does not know is refused (400 `invalid`, each
    field named) rather than dropped: a client that sends `temperature` must not believe it was
    used. Its schema says so with `additionalProperties: false` (maschina.schema)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(str(name) for name in data if name not in self.fields)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)
