from rest_framework import serializers


class PeriodSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class TokenUsageSerializer(serializers.Serializer):
    used = serializers.IntegerField()
    reserved = serializers.IntegerField()
    limit = serializers.IntegerField(allow_null=True)
    remaining = serializers.IntegerField(allow_null=True)


class RunCountSerializer(serializers.Serializer):
    used = serializers.IntegerField()
    limit = serializers.IntegerField(allow_null=True)
    remaining = serializers.IntegerField(allow_null=True)


class ModelUsageSerializer(serializers.Serializer):
    model = serializers.CharField()
    runs = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    billed_tokens = serializers.IntegerField()


class KeyUsageSerializer(serializers.Serializer):
    key = serializers.UUIDField()
    name = serializers.CharField()
    runs = serializers.IntegerField()
    billed_tokens = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    tier = serializers.CharField()
    period = PeriodSerializer()
    tokens = TokenUsageSerializer()
    runs = RunCountSerializer()
    by_model = ModelUsageSerializer(many=True)
    by_key = KeyUsageSerializer(many=True)


class AlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    period = serializers.DateField(format="%Y-%m")
    quota = serializers.CharField()
    threshold = serializers.IntegerField(help_text="Percent of the limit.")
    used = serializers.IntegerField()
    limit = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(
        allow_null=True, help_text="When the webhook took it; null without one."
    )
