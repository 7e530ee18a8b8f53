"""Alert webhooks: a JSON POST signed with HMAC-SHA256 over "<timestamp>.<body>" with the user's
secret, sent by a Celery task that retries with capped backoff and records every attempt. Where it
may go, and how it is sent there, is billing.webhook_targets."""

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time

import urllib3
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import KombuError

from maschina import metrics
from maschina.broker import RedisError
from maschina.broker_circuit import broker_circuit

from .models import Alert, Plan
from .webhook_targets import TargetRefused, url_validate, webhook_post

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Maschina-Signature"
MAX_ATTEMPTS = 9  # the first try and the task's 8 retries
REQUEUE_AFTER = dt.timedelta(minutes=15)
TIMESTAMP_HEADER = "X-Maschina-Timestamp"


def webhook_set(*, plan: Plan, url: str) -> str:
    """Set (or, with "", remove) a user's alert webhook; returns the signing secret. ValidationError
    for a URL that may not be a webhook (billing.webhook_targets)."""
    if url:
        try:
            url_validate(url)
        except TargetRefused as refused:
            raise ValidationError({"alert_webhook_url": [str(refused)]})
    plan.alert_webhook_url = url
    if url and not plan.alert_webhook_secret:
        plan.alert_webhook_secret = secrets.token_hex(32)
    plan.full_clean()
    plan.save(update_fields=["alert_webhook_url", "alert_webhook_secret", "updated_at"])
    return plan.alert_webhook_secret


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def alert_payload(alert: Alert) -> dict:
    return {
        "id": alert.pk,
        "type": "quota_alert",
        "user": alert.user.get_username(),
        "period": f"{alert.period:%Y-%m}",
        "quota": alert.quota,
        "threshold": alert.threshold,
        "used": alert.used,
        "limit": alert.limit,
        "created_at": alert.created_at.isoformat().replace("+00:00", "Z"),
    }


def webhook_enqueue(alert_id) -> None:
    from .tasks import deliver_alert

    # The alert is recorded either way: undelivered_alerts_requeue (the sweeper) enqueues it later.
    if broker_circuit.is_open:  # the broker failed a moment ago: do not wait on it (admission is here)
        logger.warning("alert %s delivery not enqueued: the broker is unreachable", alert_id)
        return
    try:
        deliver_alert.delay(alert_id)
    except (KombuError, RedisError, OSError) as exc:
        logger.warning("alert %s delivery not enqueued: %s", alert_id, exc)
        broker_circuit.failed()


def alert_deliver(alert_id) -> bool:
    """One delivery attempt. True when delivered (or nothing to deliver), False to retry."""
    alert = Alert.objects.select_related("user", "user__plan").filter(pk=alert_id).first()
    if alert is None or alert.delivered_at is not None:
        return True
    plan = getattr(alert.user, "plan", None)
    if plan is None or not plan.alert_webhook_url:
        return True
    body = json.dumps(alert_payload(alert), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(plan.alert_webhook_secret, timestamp, body),
    }
    try:
        status = webhook_post(
            plan.alert_webhook_url, body, headers, timeout=settings.ALERT_WEBHOOK_TIMEOUT_SECS
        )
        outcome, delivered = f"HTTP {status}", 200 <= status < 300  # a 3xx is not followed: failed
    except TargetRefused as refused:
        outcome, delivered = f"refused: {refused}", False
    except urllib3.exceptions.HTTPError as exc:
        outcome, delivered = exc.__class__.__name__, False
    now = timezone.now()
    Alert.objects.filter(pk=alert.pk).update(
        delivery_attempts=F("delivery_attempts") + 1,
        last_attempt_at=now,
        last_delivery_status=outcome[:100],
        delivered_at=now if delivered else None,
    )
    metrics.webhook_delivered("delivered" if delivered else "failed")
    return delivered


def undelivered_alerts_requeue(now=None) -> int:
    """Re-enqueue deliveries that were lost: never enqueued (the broker was down when the alert was
    recorded) or whose task died. The task's own retries come back within ALERT_WEBHOOK_BACKOFF_CAP_SECS,
    so an alert left longer than REQUEUE_AFTER without an attempt has nothing coming for it."""
    now = now or timezone.now()
    quiet_since = now - REQUEUE_AFTER
    lost = (
        Alert.objects.filter(delivered_at__isnull=True, delivery_attempts__lt=MAX_ATTEMPTS)
        .exclude(user__plan__alert_webhook_url="")
        .filter(
            Q(last_attempt_at__lt=quiet_since) | Q(last_attempt_at__isnull=True, created_at__lt=quiet_since)
        )
    )
    count = 0
    for alert_id in lost.values_list("id", flat=True)[:200]:
        # Counted as an attempt now, so the next sweep does not enqueue it again meanwhile.
        Alert.objects.filter(pk=alert_id).update(last_attempt_at=now)
        webhook_enqueue(alert_id)
        count += 1
    return count
