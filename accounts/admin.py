from django.contrib import admin, messages

from .models import ApiKey, generate_key
from .services import api_key_revoke, key_set_secret


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys for a user: listed, created (the secret shown once, in the message after saving) and
    revoked. Every save and revocation is audited (ApiKey is an AuditedModel). A key's limits are
    set when it is made: to change them, make another and revoke this one, as a client would."""

    list_display = [
        "lookup",
        "name",
        "user",
        "allowed_models",
        "monthly_token_limit",
        "expires_at",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    list_select_related = ["user"]
    search_fields = ["lookup", "name", "user__username"]
    autocomplete_fields = ["user"]
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        fields = ["user", "name", "allowed_models", "monthly_token_limit", "expires_at"]
        return fields + ["lookup", "created_at", "last_used_at", "revoked_at"] if obj else fields

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["user", "name", "allowed_models", "monthly_token_limit", "expires_at", "lookup",
                "created_at", "last_used_at", "revoked_at"]  # fmt: skip

    def save_model(self, request, obj, form, change):
        if change:
            return  # nothing of a key is edited here (see the class docstring)
        raw = generate_key()
        key_set_secret(obj, raw)
        super().save_model(request, obj, form, change)
        self.message_user(request, f"The new API key, shown only now: {raw}", level=messages.WARNING)

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request, queryset):
        for key in queryset:
            api_key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
