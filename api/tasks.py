"""Celery tasks of the API: draining the inbox, and forgetting what is no longer needed."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError
from django.utils import timezone

from api.services import idempotent_replies_prune
from api.stream import inbox_prune, stream_drain

DRAIN_GATHER = 0.5  # seconds: a drain waits for the events of the next half second


@shared_task(
    name="api.stream_drain",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def stream_drain_task() -> int:
    return stream_drain(gather=DRAIN_GATHER)


@shared_task(name="api.prune")
def prune_task() -> int:
    """Drained inbox rows after an hour; Idempotency-Key replies and sessions after 48."""
    now = timezone.now()
    return inbox_prune(now=now) + idempotent_replies_prune(now=now)
