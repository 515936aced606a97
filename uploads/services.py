"""Writes for CSV uploads: create, enqueue, process (the pipeline), cancel, revert.

The pipeline (``upload_process``) runs in a Celery worker:

1. Claim the job: a new ``run_token`` makes this run the owner; an older run still alive
   notices at its next chunk and stops.
2. Validate: one streamed pass decodes the whole file (so undecodable or binary content
   fails before anything is imported), reads the header, counts the records and lists the
   event names, then checks the columns each used meter needs.
3. Import: a second streamed pass sends chunks of rows to the ingestion core. Each chunk's
   events, its rejections and the job's progress (the resume point included) commit in ONE
   transaction, under a lock on the upload row. A retried run skips the records already
   committed, so nothing is counted twice.

Cancellation is honoured between chunks; what was committed stays (revert undoes it).
"""

from __future__ import annotations

import gc
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction
from django.utils import timezone

from events.ingestion import (
    RejectionInput,
    event_batch_cancel,
    event_batch_create,
    event_rejections_record,
    gc_paused,
    meter_events_ingest_columns,
)
from events.models import EventBatch
from meters.models import Meter
from uploads import parsing
from uploads.models import Upload
from uploads.writers import ChunkWriters, Turnstile
from usage_portal.audit import audit_record
from usage_portal.models import AuditEntry

logger = logging.getLogger(__name__)


def max_upload_bytes() -> int:
    return int(settings.USAGE_UPLOAD_MAX_BYTES)


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def chunk_rows() -> int:
    return _setting("USAGE_UPLOAD_CHUNK_ROWS", 20_000)


def max_line_bytes() -> int:
    return _setting("USAGE_UPLOAD_MAX_LINE_BYTES", 1024 * 1024)


# --- Creating and enqueueing ------------------------------------------------------------------
@transaction.atomic
def upload_create(*, file: UploadedFile, user: User, validate_only: bool = False) -> Upload:
    """Store the file (streamed by Django's storage API) and queue its processing.

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
        batch=batch,
    )
    if size > max_upload_bytes():
        upload.status = Upload.Status.FAILED
        upload.failed_reason = (
            f"The file is {parsing.format_bytes(size)}, larger than the limit of "
            f"{parsing.format_bytes(max_upload_bytes())}. Split it into smaller files and "
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
    queued_before = now - timedelta(seconds=_setting("USAGE_UPLOAD_QUEUED_STALE_SECONDS", 120))
    running_before = now - timedelta(seconds=_setting("USAGE_UPLOAD_RUNNING_STALE_SECONDS", 300))
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
@transaction.atomic
def upload_cancel(*, upload: Upload, user: User) -> Upload:
    upload = Upload.objects.select_for_update().get(pk=upload.pk)
    if not upload.can_cancel:
        raise ValidationError(
            f"This upload is {upload.get_status_display().lower()}; it can no longer be cancelled.",
            code="not_cancellable",
        )
    now = timezone.now()
    upload.cancel_requested_at = now
    upload.cancel_requested_by = user  # type: ignore[assignment]
    fields = ["cancel_requested_at", "cancel_requested_by"]
    old_status = upload.status
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
    upload.revert_requested_by = user  # type: ignore[assignment]
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
    """Start the real import of a validate-only run's stored file (no second upload)."""
    if not upload.can_import:
        raise ValidationError(
            "Only a finished validate-only run can be imported.", code="not_importable"
        )
    batch = event_batch_create(source=EventBatch.Source.CSV, user=user, dry_run=False)
    imported = Upload(
        original_name=upload.original_name,
        size_bytes=upload.size_bytes,
        uploaded_by=user,
        validate_only=False,
        validated_upload=upload,
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


# --- The pipeline -----------------------------------------------------------------------------
class RunSuperseded(Exception):
    """Another run owns the job now (or it ended); this one stops without writing."""


@dataclass(frozen=True, slots=True)
class _Claim:
    upload: Upload
    token: str


def _claim(upload_id: int) -> _Claim | None:
    with transaction.atomic():
        upload = Upload.objects.select_for_update().filter(pk=upload_id).first()
        if upload is None or upload.is_finished:
            return None
        now = timezone.now()
        if upload.cancel_requested_at is not None:
            _finish(upload, Upload.Status.CANCELLED, now=now)
            return None
        upload.run_token = uuid.uuid4().hex
        upload.attempts += 1
        upload.started_at = upload.started_at or now
        upload.heartbeat_at = now
        if upload.status == Upload.Status.QUEUED:
            upload.status = Upload.Status.VALIDATING
        upload.save(update_fields=["run_token", "attempts", "started_at", "heartbeat_at", "status"])
        return _Claim(upload, upload.run_token)


def _finish(upload: Upload, status: str, *, now: datetime, reason: str = "") -> None:
    upload.status = status
    upload.failed_reason = reason
    upload.finished_at = now
    upload.heartbeat_at = now
    upload.save(update_fields=["status", "failed_reason", "finished_at", "heartbeat_at"])


def _locked_owned(upload_id: int, token: str) -> Upload:
    upload = Upload.objects.select_for_update().get(pk=upload_id)
    if upload.run_token != token or upload.is_finished:
        raise RunSuperseded
    return upload


def _meter_keys() -> dict[str, parsing.MeterKeys]:
    return {
        meter.event_name: parsing.MeterKeys(
            event_name=meter.event_name,
            display_name=meter.display_name,
            customer_key=meter.customer_mapping_key,
            value_key=meter.value_settings_key,
            needs_value=meter.aggregation_formula != Meter.Formula.COUNT,
            active=meter.is_active,
        )
        for meter in Meter.objects.all()
    }


def _open_lines(upload: Upload) -> tuple[IO[bytes], Iterator[str]]:
    binary = upload.file.storage.open(upload.file.name or "", "rb")
    try:
        content = parsing.open_decompressed(binary)
    except Exception:
        binary.close()
        raise
    lines = parsing.text_lines(
        content, max_bytes=max_upload_bytes(), max_line_bytes=max_line_bytes()
    )
    return binary, lines


@contextmanager
def _data_records(upload: Upload) -> Iterator[Iterator[parsing.Record]]:
    """The stored file's records after its header row, read while the context lasts."""
    binary, lines = _open_lines(upload)
    try:
        record_iter = parsing.records(lines, max_line_bytes=max_line_bytes())
        parsing.header_read(record_iter)
        yield record_iter
    finally:
        binary.close()


def upload_process(*, upload_id: int) -> None:
    """Validate and import one upload; safe to run again at any point (see module doc)."""
    claim = _claim(upload_id)
    if claim is None:
        return
    upload, token = claim.upload, claim.token
    try:
        _process(upload, token)
    except RunSuperseded:
        logger.info("Upload %s: a newer run took over or the job ended; stopping.", upload_id)


def _process(upload: Upload, token: str) -> None:
    meters = _meter_keys()
    if not upload.file or not upload.file.storage.exists(upload.file.name or ""):
        with transaction.atomic():
            upload = _locked_owned(upload.pk, token)
            _finish(
                upload,
                Upload.Status.FAILED,
                now=timezone.now(),
                reason="The stored file is missing, so it cannot be read.",
            )
        return
    # Pass 1: validate the whole file before importing anything.
    binary, lines = _open_lines(upload)
    try:
        inspection = parsing.inspect(lines, max_line_bytes=max_line_bytes())
        used = [meters[name] for name in inspection.event_names if name in meters]
        problem = parsing.header_problems(
            inspection.header, [meter for meter in used if meter.active]
        )
    except parsing.FileProblem as error:
        problem = error.reason
        inspection = None
    finally:
        binary.close()
    with transaction.atomic():
        upload = _locked_owned(upload.pk, token)
        if problem or inspection is None:
            _finish(upload, Upload.Status.FAILED, now=timezone.now(), reason=problem)
            return
        upload.header = inspection.header
        upload.rows_total = inspection.records
        if not upload.validate_only:
            upload.status = Upload.Status.IMPORTING
        upload.heartbeat_at = timezone.now()
        upload.save(update_fields=["header", "rows_total", "status", "heartbeat_at"])
    # Pass 2: import chunk by chunk. Records an earlier run committed are read again only to
    # keep the identical-row counts right.
    builder = parsing.RowBuilder(inspection.header, meters)
    committed = sorted((low, high) for low, high in upload.committed_ranges)
    batch = upload.batch
    turnstile = Turnstile()

    def write(number: int, part: tuple[int, parsing.BuiltChunk]) -> bool:  # a writer thread
        start, built = part
        try:
            return _commit_chunk(
                upload.pk,
                token,
                batch,
                built,
                start=start,
                ids_in_turn=partial(turnstile.turn, number),
            )
        finally:
            turnstile.done(number)

    threads = _writer_threads()
    # A file too large for the identical-row counter's memory has it worked out on disk.
    large = (upload.rows_total or 0) > _setting("USAGE_UPLOAD_COUNTER_MEMORY_ROWS", 5_000_000)
    scratch = tempfile.TemporaryDirectory(prefix="upload-counts-") if large else None
    try:
        if scratch is not None:
            builder.occurrences = _occurrences_counted_on_disk(
                upload, inspection.header, meters, Path(scratch.name)
            )
        position = 0
        # The chunks' many short-lived objects die by reference counting; see gc_paused.
        with (
            _data_records(upload) as record_iter,
            gc_paused(),
            ChunkWriters(write, threads=threads) if threads else nullcontext() as writers,
        ):
            for number, chunk in enumerate(parsing.chunked(record_iter, chunk_rows())):
                for start, part, done in _parts(position, chunk, committed):
                    if not done and writers is not None and not writers.reserve():
                        return
                    built = builder.build_columns(part)
                    if done:
                        continue
                    if writers is None:
                        if not _commit_chunk(upload.pk, token, batch, built, start=start):
                            return
                    elif not writers.submit((start, built)):
                        return
                    del built
                position += len(chunk)
                if number % 50 == 49:
                    gc.collect()  # what few cycles the chunks made
            if writers is not None and not writers.close():
                return
    except parsing.FileProblem as error:
        # The first pass read the same bytes, so only a file changed underneath gets here.
        with transaction.atomic():
            upload = _locked_owned(upload.pk, token)
            _finish(upload, Upload.Status.FAILED, now=timezone.now(), reason=error.reason)
        return
    finally:
        if scratch is not None:
            scratch.cleanup()
    with transaction.atomic():
        upload = _locked_owned(upload.pk, token)
        status = (
            Upload.Status.SUCCEEDED_WITH_ERRORS if upload.rows_failed else Upload.Status.SUCCEEDED
        )
        _finish(upload, status, now=timezone.now())


def _rejection_of(row: parsing.ParsedRow) -> RejectionInput:
    assert row.error is not None
    return RejectionInput(
        code=row.error.code,
        message=row.error.message,
        line=row.line,
        column=row.error.column,
        identifier=row.raw.get(parsing.IDENTIFIER_COLUMN, ""),
        event_name=row.raw.get("event_name", ""),
        raw=row.raw,
    )


def _occurrences_counted_on_disk(
    upload: Upload, header: list[str], meters: dict[str, parsing.MeterKeys], folder: Path
) -> parsing.ExternalCounter:
    """An extra pass that builds every chunk as the import will, recording the identical-row
    keys on disk; returns the counter that then answers the import's counts."""
    counter = parsing.ExternalCounter(folder)
    recording = parsing.RowBuilder(header, meters, counter.recorder)
    with _data_records(upload) as record_iter, gc_paused():
        for chunk in parsing.chunked(record_iter, chunk_rows()):
            recording.build_columns(chunk)
    counter.finish()
    return counter


def _writer_threads() -> int:
    """How many threads commit chunks at once, each on its own connection; 0: the job's own
    thread does, between chunks (always so inside an enclosing transaction, which other
    connections could not see)."""
    if connection.in_atomic_block:
        return 0
    default = 2 if connection.vendor == "postgresql" else 1  # SQLite: one writer at a time
    return _setting("USAGE_UPLOAD_WRITERS", default)


def _parts(
    position: int, chunk: list[parsing.Record], committed: list[tuple[int, int]]
) -> list[tuple[int, list[parsing.Record], bool]]:
    """``chunk`` (records from ``position`` on) cut where the committed ranges start and end:
    (start, records, committed) in order. Usually one part: chunk sizes stay the same."""
    end = position + len(chunk)
    parts: list[tuple[int, list[parsing.Record], bool]] = []
    at = position
    for low, high in committed:
        if high <= at or low >= end:
            continue
        if low > at:
            parts.append((at, chunk[at - position : low - position], False))
            at = low
        cut = min(high, end)
        parts.append((at, chunk[at - position : cut - position], True))
        at = cut
    if at < end:
        parts.append((at, chunk[at - position :], False))
    return parts


def _ranges_merged(ranges: list[list[int]], start: int, end: int) -> list[list[int]] | None:
    """``ranges`` with [start, end) added, adjacent ranges joined; None if it overlaps one."""
    merged: list[list[int]] = []
    for low, high in sorted([*ranges, [start, end]]):
        if merged and low < merged[-1][1]:
            return None
        if merged and low == merged[-1][1]:
            merged[-1][1] = high
        else:
            merged.append([low, high])
    return merged


class _CancelRequested(Exception):
    pass


def _commit_chunk(
    upload_id: int,
    token: str,
    batch: EventBatch,
    built: parsing.BuiltChunk,
    *,
    start: int,
    ids_in_turn: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> bool:
    """Ingest one chunk and add it to the job's progress, in one transaction. False: stop
    (the job was cancelled; the chunk is not imported)."""
    end = start + built.records
    try:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # Don't wait for the WAL flush of each chunk. Safe: the chunk's events,
                # rollups and its place in the job's progress commit in this one
                # transaction, so a commit lost in a server crash loses them together and
                # the retried run imports the chunk again; nothing is counted twice or
                # skipped. (Only this transaction is affected; the job's final status
                # still commits synchronously.)
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit = off")
            _check_owned(upload_id, token)  # unlocked: saves the work of a stopped job
            parse_failures = [_rejection_of(row) for row in built.errors]
            if parse_failures:
                event_rejections_record(batch=batch, rejections=parse_failures)
            report = None
            if len(built.columns):
                report = meter_events_ingest_columns(
                    columns=built.columns, batch=batch, ids_in_turn=ids_in_turn
                )
            # The job's row is locked last: chunks committing at once queue on it only for
            # the moment their progress takes. The decisive ownership check is this one.
            upload = _locked_owned(upload_id, token)
            if upload.cancel_requested_at is not None:
                raise _CancelRequested
            ranges = _ranges_merged(upload.committed_ranges, start, end)
            if ranges is None:
                raise RunSuperseded  # committed already: only another run can have done it
            totals = upload.meter_totals
            if report is not None:
                upload.rows_imported += report.accepted
                upload.rows_duplicate += report.duplicates
                upload.rows_failed += report.rejected
                for meter_pk, total in report.totals_by_meter.items():
                    entry = totals.setdefault(str(meter_pk), {"events": 0, "value": "0"})
                    entry["events"] += total.event_count
                    entry["value"] = str(Decimal(entry["value"]) + total.value_sum)
            upload.rows_failed += len(parse_failures)
            upload.rows_read += built.records
            upload.records_committed += built.records
            upload.committed_ranges = ranges
            upload.meter_totals = totals
            upload.heartbeat_at = timezone.now()
            upload.save(
                update_fields=[
                    "rows_imported",
                    "rows_duplicate",
                    "rows_failed",
                    "rows_read",
                    "records_committed",
                    "committed_ranges",
                    "meter_totals",
                    "heartbeat_at",
                ]
            )
    except _CancelRequested:
        with transaction.atomic():
            upload = _locked_owned(upload_id, token)
            _finish(upload, Upload.Status.CANCELLED, now=timezone.now())
        return False
    return True


def _check_owned(upload_id: int, token: str) -> None:
    """RunSuperseded or _CancelRequested as ``_locked_owned`` would, without the lock."""
    state = (
        Upload.objects.filter(pk=upload_id)
        .values("run_token", "finished_at", "cancel_requested_at")
        .first()
    )
    if state is None or state["run_token"] != token or state["finished_at"] is not None:
        raise RunSuperseded
    if state["cancel_requested_at"] is not None:
        raise _CancelRequested
