from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from .webhooks import MAX_ATTEMPTS, alert_deliver


@shared_task(
    name="billing.deliver_alert",
    bind=True,
    acks_late=True,
    max_retries=MAX_ATTEMPTS - 1,
    soft_time_limit=30,
    time_limit=60,
)
def deliver_alert(self, alert_id: int) -> None:
    try:
        delivered = alert_deliver(alert_id)
    except SoftTimeLimitExceeded:  # a receiver that trickles its answer: try again later
        delivered = False
    if not delivered:
        delay = min(
            settings.ALERT_WEBHOOK_BACKOFF_CAP_SECS,
            settings.ALERT_WEBHOOK_BACKOFF_BASE_SECS * 2**self.request.retries,
        )
        raise self.retry(countdown=delay)
