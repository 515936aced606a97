"""Celery tasks for usage alerts: thin wrappers around ``alerts/services.py``. Task names are
wire names, kept from when they lived in ``meters`` so queued messages still find them."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import OperationalError

from alerts.models import UsageAlertTrigger
from alerts.services import alert_webhook_attempt, alert_webhook_backoff, usage_alerts_evaluate


@shared_task(
    name="meters.usage_alerts_evaluate",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def usage_alerts_evaluate_task(pairs: list[list[int]]) -> int:
    """Evaluate the alerts of (meter pk, customer pk) pairs; idempotent."""
    return len(
        usage_alerts_evaluate(pairs=[(meter_id, customer_id) for meter_id, customer_id in pairs])
    )


@shared_task(name="meters.alert_webhook_deliver", bind=True, acks_late=True, max_retries=None)
def alert_webhook_deliver_task(self: Any, trigger_id: int) -> str:
    """One delivery attempt; on failure, retry later with exponential backoff. The attempt
    count lives in the database, so a redelivered message never attempts more than allowed."""
    attempt = alert_webhook_attempt(trigger_id=trigger_id)
    if attempt is None:
        return "nothing to do"
    if attempt.succeeded:
        return "delivered"
    status = UsageAlertTrigger.objects.values_list("delivery_status", flat=True).get(pk=trigger_id)
    if status != UsageAlertTrigger.Delivery.PENDING:
        return "failed"
    raise self.retry(countdown=alert_webhook_backoff(attempt.attempt))
