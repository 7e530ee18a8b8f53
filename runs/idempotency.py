"""Idempotent run creation (CONTRACT section 12). The Idempotency-Key is stored on the run it
created, under a unique constraint per user, so racing duplicates cannot both insert: the loser's
admission fails as a whole (nothing reserved, nothing enqueued) and answers with the winner's run.
A refused request inserts no run, so it stores nothing and its key may be used again."""

import datetime as dt
import hashlib
import json
import re

from django.utils import timezone

from maschina.errors import ApiError

from . import services
from .models import Run

HEADER = "HTTP_IDEMPOTENCY_KEY"
IDEMPOTENCY_SECS = 24 * 3600
_VALID = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII, space included


class KeyReused(Exception):
    pass


def idempotency_key_of(request) -> str | None:
    """The request's Idempotency-Key, None without one; 400 `invalid` for any other value."""
    raw = request.META.get(HEADER)
    if raw is None:
        return None
    if not _VALID.fullmatch(raw):
        raise ApiError(
            "invalid",
            "The request has invalid fields.",
            fields={"Idempotency-Key": ["Must be 1 to 255 printable ASCII characters."]},
        )
    return raw


def request_digest(agent_id, body) -> str:
    """What makes two requests the same: the agent and the body as parsed JSON (so key order and
    whitespace do not matter)."""
    canonical = json.dumps({"agent": str(agent_id), "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_replayed(*, user, key: str, digest: str) -> Run | None:
    """The run this user's key created within IDEMPOTENCY_SECS, or None (never used, or expired: then
    the key is freed for a new run). KeyReused when the key came with another agent or body."""
    run = Run.objects.filter(user=user, idempotency_key=key).first()
    if run is None:
        return None
    if run.created_at < timezone.now() - dt.timedelta(seconds=IDEMPOTENCY_SECS):
        services.run_forget_idempotency_key(run.pk, key)
        return None
    if run.request_digest != digest:
        raise KeyReused()
    return run
