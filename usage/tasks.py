"""Celery tasks of the read side: a thin wrapper around ``usage/rollups.py``. The task name is
a wire name, kept from when it lived in ``meters`` so queued messages still find it."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from usage.rollups import usage_days_refresh
from usage_portal.sqlite_lock import write_lock_patience


@shared_task(
    name="meters.usage_days_refresh",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def usage_days_refresh_task(meter_id: int | None = None) -> int:
    """Recompute the daily rollups of every stale (meter, day) of ``meter_id`` (None: every
    meter); idempotent. Queued per meter after an ingestion or cancellation commits (at most
    one queued per meter), and by beat every minute as a sweep of every meter. On SQLite it
    waits for the write lock quietly past an import's span of chunks before it asks for it,
    so that it does not cut every span short (``usage_portal.sqlite_lock``)."""
    with write_lock_patience(float(settings.USAGE_UPLOAD_SQLITE_SPAN_SECONDS) + 5):
        return usage_days_refresh(meter_id=meter_id, queued=meter_id is not None)
