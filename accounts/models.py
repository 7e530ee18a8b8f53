"""API keys: shown once, stored only as a SHA-256 hash (the key carries 240 bits of randomness, so a
fast hash is enough), found by a short public prefix and compared in constant time."""

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models

from audit.tracking import AuditedModel

KEY_PREFIX = "msk_live_"
LOOKUP_LEN = 12  # characters after KEY_PREFIX stored in clear to find the row


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def generate_key() -> str:
    # token_urlsafe(30) gives 40 url-safe characters.
    return KEY_PREFIX + secrets.token_urlsafe(30)


class ApiKey(AuditedModel):
    audit_masked_fields = ("key_hash",)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    lookup = models.CharField(max_length=LOOKUP_LEN, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{KEY_PREFIX}{self.lookup}… ({self.user})"
