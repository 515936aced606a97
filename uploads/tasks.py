"""Celery tasks for uploads: thin wrappers around the services and the pipeline."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import OperationalError

from uploads.pipeline import upload_process
from uploads.services import upload_revert, uploads_requeue_stale

# An upload's import and its revert: redelivered if the worker dies, and tried again after a
# lost database connection or a lock timeout. Both services are safe to run again (an
# import resumes after its last committed chunk; a revert already done does nothing).
_JOB: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "max_retries": 8,
}


@shared_task(name="uploads.process", **_JOB)
def upload_process_task(upload_id: int) -> None:
    upload_process(upload_id=upload_id)


@shared_task(name="uploads.revert", **_JOB)
def upload_revert_task(upload_id: int) -> None:
    upload_revert(upload_id=upload_id)


@shared_task(name="uploads.requeue_stale", acks_late=True)
def uploads_requeue_stale_task() -> list[int]:
    return uploads_requeue_stale()
