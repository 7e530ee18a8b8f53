import hmac
import re

from django.utils import timezone
from rest_framework import authentication, exceptions, status

from maschina import logs
from maschina.errors import ApiError
from routing import snapshot

from .key_lookup import active_key
from .models import KEY_PREFIX, LOOKUP_LEN, hash_key

KEY_RE = re.compile(r"^" + re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{40,200}$")


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Authorization: Bearer msk_live_... (CONTRACT section 1)."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None  # -> 401 not_authenticated
        scheme, _, raw = header.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not KEY_RE.match(raw):
            raise exceptions.AuthenticationFailed("The API key is invalid.")
        # The rules revision rides along, so the gate sees every committed edit at no extra query.
        key, rules_revision = active_key(raw[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_LEN])
        if key is None or not hmac.compare_digest(key.key_hash, hash_key(raw)):
            raise exceptions.AuthenticationFailed("The API key is invalid.")
        if key.expires_at is not None and key.expires_at <= timezone.now():
            raise ApiError("api_key_expired", "The API key has expired.", status.HTTP_401_UNAUTHORIZED)
        snapshot.observe_revision(rules_revision)
        logs.bind_user(key.user_id)
        return key.user, key

    def authenticate_header(self, request):
        return self.keyword
