from rest_framework import serializers

from maschina.fields import KnownFieldsOnly, StrictCharField
from routing.snapshot import get_rules

from .models import Agent

MAX_PROMPT_CHARS = 100_000


class AgentModelField(StrictCharField):
    catalog_model_id = "any"  # its schema: the catalog's ids (routing.schema)


class AgentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Agent
        fields = ["id", "name", "description", "system_prompt", "model", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class AgentWriteSerializer(KnownFieldsOnly):
    name = StrictCharField(max_length=200)
    description = StrictCharField(required=False, allow_blank=True, max_length=10_000)
    system_prompt = StrictCharField(required=False, allow_blank=True, max_length=MAX_PROMPT_CHARS)
    model = AgentModelField(required=False, allow_null=True, max_length=200)

    def validate_model(self, value):
        # An agent may name any catalog model; whether its owner may run it is decided at run time.
        if value is not None and get_rules().lookup(value) is None:
            raise serializers.ValidationError(f"Unknown model: {value}")
        return value
