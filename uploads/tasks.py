"""Celery tasks for uploads: thin wrappers around the services and the pipeline."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import OperationalError

from uploads.connectors import (
    DownloadRetry,
    connector_sync,
    connectors_poll,
    s3_errors_write,
    s3_object_import,
)
from uploads.models import S3Connector
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


@shared_task(name="uploads.s3_poll", acks_late=True)
def s3_poll_task() -> list[int]:
    return connectors_poll()


@shared_task(name="uploads.s3_sync", acks_late=True, autoretry_for=(OperationalError,))
def s3_connector_sync_task(connector_id: int) -> int:
    connector = S3Connector.objects.filter(pk=connector_id).first()
    if connector is None or connector.is_paused:
        return 0
    return connector_sync(connector=connector).new


# A download that failed for a passing reason (the store unreachable, a broken connection)
# is tried again, backing off; after the last try the file stays "found" and the next poll
# sends it again. A worker that dies mid-download is replaced by the redelivery.
@shared_task(
    name="uploads.s3_object_import",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(DownloadRetry, OperationalError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=6,
)
def s3_object_import_task(object_id: int) -> int | None:
    upload = s3_object_import(object_id=object_id)
    return upload.pk if upload else None


@shared_task(
    name="uploads.s3_errors_write",
    acks_late=True,
    autoretry_for=(OperationalError,),
    max_retries=3,
)
def s3_errors_write_task(object_id: int) -> str:
    return s3_errors_write(object_id=object_id)
