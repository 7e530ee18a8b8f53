from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import KEY_PREFIX, LOOKUP_LEN, ApiKey, generate_key, hash_key


def api_key_create(*, user, name: str = "") -> tuple[ApiKey, str]:
    """Create a key; returns the row and the raw key, which is never stored or shown again."""
    for _ in range(5):
        raw = generate_key()
        try:
            with transaction.atomic():
                key = ApiKey.objects.create(
                    user=user,
                    name=name,
                    lookup=raw[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_LEN],
                    key_hash=hash_key(raw),
                )
            return key, raw
        except IntegrityError:  # lookup prefix collision: astronomically rare, just draw again
            continue
    raise RuntimeError("could not draw a unique API key")


def api_key_revoke(*, key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
