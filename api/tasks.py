"""Celery tasks of the API: draining the event stream's inbox."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from api.stream import stream_drain


@shared_task(
    name="api.stream_drain",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def stream_drain_task() -> int:
    return stream_drain()
