"""API keys: shown once, stored only as a SHA-256 hash (the key carries 240 bits of randomness, so a
fast hash is enough), found by a short public prefix and compared in constant time."""

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from audit.tracking import AuditedModel

KEY_PREFIX = "msk_live_"
LOOKUP_LEN = 12  # characters after KEY_PREFIX stored in clear to find the row


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def generate_key() -> str:
    # token_urlsafe(30) gives 40 url-safe characters.
    return KEY_PREFIX + secrets.token_urlsafe(30)


SECRET_PREFIX_LEN = 12  # the secret's first characters, shown as the key's `prefix`


class ApiKey(AuditedModel):
    audit_masked_fields = ("key_hash",)
    # Touched at most once a minute by the key lookup itself (accounts.statements), not a change.
    audit_ignored_fields = ("last_used_at",)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    lookup = models.CharField(max_length=LOOKUP_LEN, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    # CONTRACT section 10: null = any model the tier allows, else catalog ids and patterns.
    allowed_models = models.JSONField(
        null=True, blank=True, help_text="Catalog ids and patterns this key may run; empty = any."
    )
    monthly_token_limit = models.BigIntegerField(
        null=True, blank=True, help_text="Billed tokens per UTC month through this key; empty = no cap."
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                name="apikey_token_limit_gte_0",
                condition=Q(monthly_token_limit__gte=0) | Q(monthly_token_limit__isnull=True),
            ),
        ]

    @property
    def prefix(self) -> str:
        return (KEY_PREFIX + self.lookup)[:SECRET_PREFIX_LEN]

    @property
    def is_restricted(self) -> bool:
        """A key limited to some models or tokens may not manage keys (CONTRACT section 10)."""
        return self.allowed_models is not None or self.monthly_token_limit is not None

    def clean(self):
        from django.core.exceptions import ValidationError

        from routing.access import model_list_problem
        from routing.snapshot import get_rules

        if self.allowed_models is not None:
            problem = model_list_problem(get_rules(), self.allowed_models)
            if problem:
                raise ValidationError({"allowed_models": problem})

    def __str__(self):
        return f"{KEY_PREFIX}{self.lookup}… ({self.user})"
