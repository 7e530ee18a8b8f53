"""Quota alerts: one per user, period, quota and threshold, recorded the moment a figure crosses
it. The unique constraint decides who records it, so concurrent settlements record it once, and only
the one that created it sends the webhook."""

import datetime as dt

from django.db import transaction

from .models import Alert

THRESHOLDS = (80, 100)  # percent of the limit


def alerts_record(*, user_id: int, period: dt.date, quota: str, used: int, limit: int | None) -> list[Alert]:
    """Record every threshold `used` has reached; returns the alerts this call created."""
    if not limit:  # unlimited, or a limit of 0 that only 0x runs live under
        return []
    created = []
    for threshold in THRESHOLDS:
        if used * 100 < threshold * limit:
            break
        alert, new = Alert.objects.get_or_create(
            user_id=user_id,
            period=period,
            quota=quota,
            threshold=threshold,
            defaults={"used": used, "limit": limit},
        )
        if new:
            created.append(alert)

            def deliver(alert_id: int = alert.pk) -> None:
                _enqueue_delivery(alert_id)

            # robust: a failure to enqueue must never stop the callbacks after it (the run's dispatch).
            transaction.on_commit(deliver, robust=True)
    return created


def _enqueue_delivery(alert_id):
    from .webhooks import webhook_enqueue

    webhook_enqueue(alert_id)
