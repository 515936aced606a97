"""Celery tasks for uploads: thin wrappers around the services."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from uploads.services import upload_process, upload_revert, uploads_requeue_stale


@shared_task(
    name="uploads.process",
    acks_late=True,
    reject_on_worker_lost=True,
    # A lost database connection or a lock timeout: try again; the run resumes where the
    # last committed chunk left it.
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def upload_process_task(upload_id: int) -> None:
    upload_process(upload_id=upload_id)


@shared_task(
    name="uploads.revert",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def upload_revert_task(upload_id: int) -> None:
    upload_revert(upload_id=upload_id)


@shared_task(name="uploads.requeue_stale", acks_late=True)
def uploads_requeue_stale_task() -> list[int]:
    return uploads_requeue_stale()
