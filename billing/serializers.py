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


class UsageHistoryRowSerializer(serializers.Serializer):
    day = serializers.DateField(required=False, help_text="With group_by=day.")
    model = serializers.CharField(required=False, help_text="With group_by=model.")
    agent = serializers.UUIDField(
        required=False, allow_null=True, help_text="With group_by=agent; null: a deleted agent."
    )
    key = serializers.UUIDField(
        required=False, allow_null=True, help_text="With group_by=key; null: runs not admitted by a key."
    )
    runs = serializers.IntegerField(help_text="Runs admitted.")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    billed_tokens = serializers.IntegerField()


class UsageHistorySerializer(serializers.Serializer):
    # `from` is a keyword: the field is declared below under its real name.
    to = serializers.DateField()
    group_by = serializers.ChoiceField(choices=["day", "model", "agent", "key"])
    results = UsageHistoryRowSerializer(many=True)


UsageHistorySerializer._declared_fields = {
    "from": serializers.DateField(),
    **UsageHistorySerializer._declared_fields,
}
