"""Celery tasks of the read side: a thin wrapper around ``usage/rollups.py``. The task name is
a wire name, kept from when it lived in ``meters`` so queued messages still find it."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from usage.rollups import usage_days_refresh


@shared_task(
    name="meters.usage_days_refresh",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def usage_days_refresh_task() -> int:
    """Recompute the daily rollups of every stale (meter, day); idempotent. Sent after each
    ingestion or cancellation commits, and by beat every minute as a sweep."""
    return usage_days_refresh()
