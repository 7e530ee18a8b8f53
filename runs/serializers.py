import datetime as dt
import math

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from maschina.fields import KnownFieldsOnly, StrictCharField, StrictIntegerField
from routing.serializers import normalized_multiplier

from .models import Run

DEFAULT_TIMEOUT_SECS = 300
MAX_INPUT_DEPTH = 32


def storable_json_problem(value) -> str | None:
    """Why PostgreSQL's jsonb could not store `value` as given, or None: NUL characters, lone
    surrogates, non-finite numbers, or nesting deeper than MAX_INPUT_DEPTH (walked without
    recursion, so no input can exhaust the stack)."""
    if type(value) is str:  # a model id, the common case: no walk
        return _string_problem(value)
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_INPUT_DEPTH:
            return f"Must not nest deeper than {MAX_INPUT_DEPTH} levels."
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                return problem
        elif isinstance(item, float) and not math.isfinite(item):
            return "Numbers must be finite."
    return None


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "Must not contain NUL (U+0000) characters."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "Must be valid Unicode (no lone surrogates)."
    return None


@extend_schema_field({"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"})
class MessageField(StrictCharField):
    """input.message: a string with something other than white space, and no NUL."""


class RunInputSerializer(serializers.Serializer):
    """`input` is an object with a non-empty string `message`; other keys are kept as given.
    The message's length is checked by the gate (input_too_long), not here."""

    message = MessageField(trim_whitespace=False)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(["Must be an object."])
        problem = storable_json_problem(data)
        if problem:
            raise serializers.ValidationError([problem])
        validated = super().to_internal_value(data)
        if not validated["message"].strip():
            raise serializers.ValidationError({"message": ["Must not be empty."]})
        return {**data, "message": validated["message"]}


class RawModelField(serializers.Field):
    """The body's `model`, taken as given: its type is checked by the gate after the input's risk
    checks (CONTRACT section 5, step 3), not with the body."""

    catalog_model_id = "active"  # its schema: the active catalog's ids (routing.schema)

    def to_internal_value(self, data):
        return data

    def to_representation(self, value):
        return value


class RunCreateSerializer(KnownFieldsOnly):
    """The run body. The context's `tier` (a TierInfo) caps timeout_secs and max_tokens."""

    tier_caps = {"timeout_secs": "max_timeout_secs", "max_tokens": "max_tokens"}  # for the schema

    input = RunInputSerializer()
    model = RawModelField(required=False, allow_null=True)
    timeout_secs = StrictIntegerField(required=False, min_value=1)
    max_tokens = StrictIntegerField(required=False, min_value=1)

    def validate_timeout_secs(self, value):
        tier = self.context["tier"]
        if value > tier.max_timeout_secs:
            raise serializers.ValidationError(
                f"Must be at most {tier.max_timeout_secs} on the {tier.slug} plan."
            )
        return value

    def validate_max_tokens(self, value):
        tier = self.context["tier"]
        if value > tier.max_tokens:
            raise serializers.ValidationError(f"Must be at most {tier.max_tokens} on the {tier.slug} plan.")
        return value

    def validate(self, attrs):
        tier = self.context["tier"]
        attrs.setdefault("timeout_secs", min(DEFAULT_TIMEOUT_SECS, tier.max_timeout_secs))
        attrs.setdefault("max_tokens", tier.max_tokens)
        attrs.setdefault("model", None)
        return attrs


class RunUsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField(allow_null=True)
    output_tokens = serializers.IntegerField(allow_null=True)
    multiplier = serializers.CharField()
    billed_tokens = serializers.IntegerField(allow_null=True)


class RunErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class RunOutputSerializer(serializers.Serializer):
    text = serializers.CharField()


# Times are UTC (CONTRACT section 1): given the zone, the field does not look up the active one on
# every call, which cost twice the rest of its rendering (every run is rendered at least twice).
_DATETIME = serializers.DateTimeField(default_timezone=dt.UTC)


class RunSerializer(serializers.ModelSerializer):
    agent = serializers.UUIDField(source="agent_id", allow_null=True)
    key = serializers.UUIDField(source="key_id", allow_null=True)
    usage = serializers.SerializerMethodField()
    output = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id", "agent", "key", "status", "requested_model", "model", "provider", "input", "output",
            "usage", "error", "timeout_secs", "max_tokens", "created_at", "started_at", "finished_at",
        ]  # fmt: skip

    def to_representation(self, run):
        # The same object DRF's field-by-field rendering gives (a test compares the two), written out:
        # that rendering builds this ModelSerializer's fields from the model on every instance, which
        # costs more than the rest of a GET; every admission and every GET /runs/{id} renders a run.
        return {
            "id": str(run.id),
            "agent": None if run.agent_id is None else str(run.agent_id),
            "key": None if run.key_id is None else str(run.key_id),
            "status": run.status,
            "requested_model": run.requested_model,
            "model": run.model,
            "provider": run.provider,
            "input": run.input,
            "output": self.get_output(run),
            "usage": self.get_usage(run),
            "error": self.get_error(run),
            "timeout_secs": run.timeout_secs,
            "max_tokens": run.max_tokens,
            "created_at": _DATETIME.to_representation(run.created_at),
            "started_at": _DATETIME.to_representation(run.started_at),
            "finished_at": _DATETIME.to_representation(run.finished_at),
        }

    @extend_schema_field(RunUsageSerializer)
    def get_usage(self, run):
        return {
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "multiplier": normalized_multiplier(run.multiplier),
            "billed_tokens": run.billed_tokens,
        }

    @extend_schema_field(RunOutputSerializer(allow_null=True))
    def get_output(self, run):
        return run.output

    @extend_schema_field(RunErrorSerializer(allow_null=True))
    def get_error(self, run):
        return run.error
