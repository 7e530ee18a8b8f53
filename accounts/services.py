from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import KEY_PREFIX, LOOKUP_LEN, ApiKey, generate_key, hash_key


def api_key_create(
    *, user, name: str = "", allowed_models=None, monthly_token_limit=None, expires_at=None
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the raw key, which is never stored or shown again."""
    for _ in range(5):
        raw = generate_key()
        try:
            with transaction.atomic():
                key = ApiKey(
                    user=user,
                    name=name,
                    allowed_models=allowed_models,
                    monthly_token_limit=monthly_token_limit,
                    expires_at=expires_at,
                )
                key_set_secret(key, raw)
                key.full_clean(exclude=["user"])
                key.save(force_insert=True)
            return key, raw
        except IntegrityError:  # lookup prefix collision: astronomically rare, just draw again
            continue
    raise RuntimeError("could not draw a unique API key")


def key_set_secret(key: ApiKey, raw: str) -> None:
    """What a key stores of its secret: the lookup prefix in clear, and the hash."""
    key.lookup = raw[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_LEN]
    key.key_hash = hash_key(raw)


def api_key_revoke(*, key: ApiKey) -> None:
    """Revoke (recorded by the audit, as a QuerySet.update() of an audited model); a revoked key
    keeps its first revocation time."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db(fields=["revoked_at"])
