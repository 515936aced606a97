"""Writes for CSV uploads, the user's actions: create (upload or validate only), enqueue
and re-queue, cancel, import the rest of a cancelled upload, revert, import a validated
file. The import itself runs in a worker: ``uploads.pipeline``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from events.ingestion import event_batch_cancel, event_batch_create
from events.models import EventBatch
from uploads.limits import max_upload_bytes, setting
from uploads.models import Upload
from uploads.pulse import cancel_flag_lower, cancel_flag_raise
from uploads.reading import format_bytes
from usage_portal.audit import audit_record
from usage_portal.models import AuditEntry

logger = logging.getLogger(__name__)


# --- Creating and enqueueing ------------------------------------------------------------------
@transaction.atomic
def upload_create(
    *,
    file: UploadedFile,
    user: User,
    validate_only: bool = False,
    rows_without_identifier: str = Upload.RowsWithoutIdentifier.NEW_USAGE,
) -> Upload:
    """Store the file (streamed by Django's storage API) and queue its processing.
    ``rows_without_identifier`` says what rows without an identifier are (see ``Upload``).

    A file over the size limit is not stored: the upload is recorded as failed at once.
    """
    name = (file.name or "upload.csv")[-255:]
    size = int(file.size or 0)
    batch = event_batch_create(source=EventBatch.Source.CSV, user=user, dry_run=validate_only)
    upload = Upload(
        original_name=name,
        size_bytes=size,
        uploaded_by=user,
        validate_only=validate_only,
        rows_without_identifier=rows_without_identifier,
        batch=batch,
    )
    if size > max_upload_bytes():
        upload.status = Upload.Status.FAILED
        upload.failed_reason = (
            f"The file is {format_bytes(size)}, larger than the limit of "
            f"{format_bytes(max_upload_bytes())}. Split it into smaller files and "
            f"upload each one."
        )
        upload.finished_at = timezone.now()
        upload.save()
    else:
        upload.file.save(name, file, save=False)
        upload.save()
        transaction.on_commit(lambda: upload_enqueue(upload=upload))
    audit_record(
        target=upload,
        action=AuditEntry.Action.UPLOAD,
        actor=user,
        changes={
            "file": [None, name],
            "size_bytes": [None, size],
            "validate_only": [None, validate_only],
            "rows_without_identifier": [None, rows_without_identifier],
        },
    )
    return upload


def upload_enqueue(*, upload: Upload) -> bool:
    """Hand the job to the broker. If the broker is down the job stays ``queued`` with its
    file kept, and the periodic re-queue (``uploads_requeue_stale``) sends it later."""
    from uploads.tasks import upload_process_task

    Upload.objects.filter(pk=upload.pk).update(queued_at=timezone.now())
    return _send(upload_process_task, upload, "stays queued")


def _send(task: Any, upload: Upload, stays: str) -> bool:
    """Send ``task`` for ``upload`` once, without retrying: False (and a warning saying what
    the upload ``stays``) when the broker is unreachable; the periodic re-queue sends it."""
    try:
        with task.app.connection_for_write() as connection:
            task.apply_async(args=[upload.pk], connection=connection, retry=False)
    except Exception:  # any broker failure: kombu, redis, OS errors
        logger.warning("Upload %s %s: the broker is unreachable.", upload.pk, stays, exc_info=True)
        return False
    return True


def uploads_requeue_stale(*, now: datetime | None = None) -> list[int]:
    """Re-send jobs nobody is working on: queued for too long (e.g. the broker was down when
    they were uploaded), or running with no heartbeat for too long (the worker died)."""
    now = now or timezone.now()
    queued_before = now - timedelta(seconds=setting("USAGE_UPLOAD_QUEUED_STALE_SECONDS", 120))
    running_before = now - timedelta(seconds=setting("USAGE_UPLOAD_RUNNING_STALE_SECONDS", 300))
    stale = Upload.objects.filter(status=Upload.Status.QUEUED, queued_at__lt=queued_before)
    stale_ids = set(stale.values_list("pk", flat=True))
    stale_ids |= set(
        Upload.objects.filter(status=Upload.Status.QUEUED, queued_at__isnull=True).values_list(
            "pk", flat=True
        )
    )
    stale_ids |= set(
        Upload.objects.filter(
            status__in=Upload.RUNNING_STATUSES, heartbeat_at__lt=running_before
        ).values_list("pk", flat=True)
    )
    requeued = []
    for upload in Upload.objects.filter(pk__in=stale_ids).order_by("pk"):
        if upload_enqueue(upload=upload):
            requeued.append(upload.pk)
    # Reverts asked for long ago and not done: the message was lost, or the worker died.
    for upload in Upload.objects.filter(
        revert_requested_at__lt=queued_before, reverted_at__isnull=True
    ).order_by("pk"):
        if upload.is_revertible and upload_revert_enqueue(upload=upload):
            requeued.append(upload.pk)
    return requeued


# --- User actions -----------------------------------------------------------------------------
def upload_cancel(*, upload: Upload, user: User) -> Upload:
    """Ask for a cancellation: a queued job is cancelled now, a running one within moments
    (its pulse hears it; on SQLite through ``cancel_flag``, which needs no write lock)."""
    fresh = Upload.objects.get(pk=upload.pk)  # a read: it never waits for the write lock
    flagged = fresh.can_cancel and fresh.status in Upload.RUNNING_STATUSES
    if flagged:
        cancel_flag_raise(upload.pk)
    try:
        return _upload_cancel_record(upload=upload, user=user, was=fresh.status)
    finally:
        if flagged:
            cancel_flag_lower(upload.pk)


@transaction.atomic
def _upload_cancel_record(*, upload: Upload, user: User, was: str) -> Upload:
    upload = Upload.objects.select_for_update().get(pk=upload.pk)
    stopped_by_flag = upload.status == Upload.Status.CANCELLED and not upload.cancel_requested_at
    if not upload.can_cancel and not stopped_by_flag:
        raise ValidationError(
            f"This upload is {upload.get_status_display().lower()}; it can no longer be cancelled.",
            code="not_cancellable",
        )
    now = timezone.now()
    upload.cancel_requested_at = now
    upload.cancel_requested_by = user
    fields = ["cancel_requested_at", "cancel_requested_by"]
    old_status = was if stopped_by_flag else upload.status
    if upload.status == Upload.Status.QUEUED:
        # Nobody is working on it: cancel now. A run starting later sees the request.
        upload.status = Upload.Status.CANCELLED
        upload.finished_at = now
        fields += ["status", "finished_at"]
    upload.save(update_fields=fields)
    audit_record(
        target=upload,
        action=AuditEntry.Action.CANCEL,
        actor=user,
        changes={"status": [old_status, upload.status]},
    )
    return upload


@transaction.atomic
def upload_import_rest(*, upload: Upload, user: User) -> Upload:
    """Import the rows of a cancelled upload that were not committed, into the same upload:
    the job is queued again, and its run skips the committed ranges as a resumed run does,
    so each row of the file ends up counted exactly once."""
    upload = Upload.objects.select_for_update().get(pk=upload.pk)
    if not upload.can_import_rest:
        raise ValidationError(
            "Only a cancelled import with rows not yet imported, and not reverted, can import "
            "the rest of its file.",
            code="not_resumable",
        )
    old_status = upload.status
    cancel_flag_lower(upload.pk)
    upload.status = Upload.Status.QUEUED
    upload.cancel_requested_at = None
    upload.cancel_requested_by = None
    upload.finished_at = None
    upload.failed_reason = ""
    upload.import_started_at = None  # no rate until the new pass begins (not the pause's)
    upload.save(
        update_fields=[
            "status",
            "cancel_requested_at",
            "cancel_requested_by",
            "finished_at",
            "failed_reason",
            "import_started_at",
        ]
    )
    audit_record(
        target=upload,
        action=AuditEntry.Action.IMPORT,
        actor=user,
        changes={
            "status": [old_status, upload.status],
            "records_committed": [upload.records_committed, upload.rows_total],
        },
    )
    transaction.on_commit(lambda: upload_enqueue(upload=upload))
    return upload


@transaction.atomic
def upload_revert_request(*, upload: Upload, user: User) -> Upload:
    """Ask for a revert; a worker carries it out (``upload_revert``), since cancelling a large
    upload's events takes longer than a web request may."""
    upload = Upload.objects.select_for_update().get(pk=upload.pk)
    if not upload.can_revert:
        reason = (
            "A revert of this upload is already on its way."
            if upload.revert_pending
            else "Only a finished import that brought in events, and was not reverted yet, "
            "can be reverted."
        )
        raise ValidationError(reason, code="not_revertible")
    upload.revert_requested_at = timezone.now()
    upload.revert_requested_by = user
    upload.save(update_fields=["revert_requested_at", "revert_requested_by"])
    transaction.on_commit(lambda: upload_revert_enqueue(upload=upload))
    return upload


def upload_revert_enqueue(*, upload: Upload) -> bool:
    """Hand a requested revert to the broker; if it is down, the periodic re-queue sends it."""
    from uploads.tasks import upload_revert_task

    return _send(upload_revert_task, upload, "revert stays requested")


@transaction.atomic
def upload_revert(*, upload_id: int) -> Upload | None:
    """Carry out a requested revert: cancel every event the upload brought in (the core keeps
    the rollups exact), all in one transaction. Idempotent: a revert already done, or never
    asked for, does nothing and returns None."""
    upload = Upload.objects.select_for_update().filter(pk=upload_id).first()
    if upload is None or not upload.revert_pending or not upload.is_revertible:
        return None
    user = upload.revert_requested_by
    assert user is not None
    cancelled = event_batch_cancel(batch=upload.batch, user=user)
    upload.reverted_at = timezone.now()
    upload.reverted_by = user
    upload.events_reverted = cancelled
    upload.save(update_fields=["reverted_at", "reverted_by", "events_reverted"])
    audit_record(
        target=upload,
        action=AuditEntry.Action.REVERT,
        actor=user,
        changes={"events_cancelled": [0, cancelled]},
    )
    return upload


@transaction.atomic
def upload_import_validated(*, upload: Upload, user: User) -> Upload:
    """Start the real import of a validate-only run's stored file (no second upload), once:
    the run's row is locked, so two clicks at once make one import."""
    upload = Upload.objects.select_for_update().get(pk=upload.pk)
    made = upload.import_made
    if made is not None:
        raise ValidationError(
            f"This file was imported already (upload {made.pk}, {made.get_status_display()}); "
            "importing it again would count its rows twice. Revert that upload first to "
            "import it again.",
            code="imported_already",
        )
    if not upload.can_import:
        raise ValidationError(
            "Only a finished validate-only run can be imported.", code="not_importable"
        )
    batch = event_batch_create(source=upload.batch.source, user=user, dry_run=False)
    imported = Upload(
        original_name=upload.original_name,
        size_bytes=upload.size_bytes,
        uploaded_by=user,
        file_format=upload.file_format,
        validate_only=False,
        validated_upload=upload,
        rows_without_identifier=upload.rows_without_identifier,  # as it was validated
        batch=batch,
    )
    imported.file.name = upload.file.name  # the same stored file, not a copy
    imported.save()
    audit_record(
        target=imported,
        action=AuditEntry.Action.UPLOAD,
        actor=user,
        changes={"file": [None, upload.original_name], "validated_upload": [None, upload.pk]},
    )
    transaction.on_commit(lambda: upload_enqueue(upload=imported))
    return imported
