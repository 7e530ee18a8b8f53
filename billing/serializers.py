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


class UsageSerializer(serializers.Serializer):
    tier = serializers.CharField()
    period = PeriodSerializer()
    tokens = TokenUsageSerializer()
    runs = RunCountSerializer()
    by_model = ModelUsageSerializer(many=True)
