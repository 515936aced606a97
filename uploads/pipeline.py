"""The import pipeline: an upload's stored file validated and imported chunk by chunk.

``upload_process`` runs in a Celery worker:

1. Claim the job: a new ``run_token`` makes this run the owner; an older run still alive
   notices at its next chunk and stops.
2. Validate: one streamed pass decodes the whole file (so undecodable or binary content
   fails before anything is imported), reads the header, counts the records and lists the
   event names, then checks the columns each used meter needs.
3. Import: a second streamed pass sends chunks of rows to the ingestion core. Each chunk's
   events, its rejections and the job's progress (the resume point included) commit in ONE
   transaction, under a lock on the upload row. A retried run skips the records already
   committed, so nothing is counted twice. Writer threads (``uploads.writers``) commit
   chunks while the next is built. On SQLite the one writer commits several chunks at once
   (each a savepoint, all or nothing with its progress), and steps aside for other writers
   (``usage_portal.sqlite_lock``); the page shows the progress not yet committed
   (``uploads.pulse``).

Cancellation is heard within a second in every pass (``uploads.pulse``) and stops the
chunks being written at once (rolled back); what was committed stays (revert undoes it,
"Import the rest" imports the rest into the same upload).
"""

from __future__ import annotations

import gc
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import IO

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from events.ingestion import (
    EventColumns,
    IngestCounts,
    MeterTotal,
    RejectionInput,
    event_rejections_record,
    gc_paused,
    meter_events_ingest_columns,
)
from events.models import EventBatch
from meters.models import Meter
from uploads.connectors import upload_finished_announce
from uploads.counters import Counter, ExternalCounter
from uploads.json_reading import json_inspect, json_records
from uploads.limits import chunk_rows, max_columns, max_line_bytes, max_upload_bytes, setting
from uploads.models import Upload, UploadDuplicates
from uploads.pulse import (
    CancelRequested,
    Pulse,
    RunSuperseded,
    pending_progress_clear,
    pending_progress_write,
    run_check,
)
from uploads.reading import (
    IDENTIFIER_COLUMN,
    FileProblem,
    Inspection,
    MeterKeys,
    Record,
    chunked,
    header_problems,
    header_read,
    inspect,
    meter_columns_missing,
    open_decompressed,
    records,
    text_lines,
)
from uploads.rows import BuiltChunk, ParsedRow, RowBuilder
from uploads.writers import ChunkWriters, Span, Turnstile
from usage_portal.sqlite_lock import wanted_flag

logger = logging.getLogger(__name__)


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
        upload.import_started_at = None  # until this run's import pass begins
        if upload.status == Upload.Status.QUEUED:
            upload.status = Upload.Status.VALIDATING
        upload.save(
            update_fields=[
                "run_token",
                "attempts",
                "started_at",
                "heartbeat_at",
                "import_started_at",
                "status",
            ]
        )
        return _Claim(upload, upload.run_token)


def _finish(upload: Upload, status: str, *, now: datetime, reason: str = "") -> None:
    upload.status = status
    upload.failed_reason = reason
    upload.finished_at = now
    upload.heartbeat_at = now
    upload.save(update_fields=["status", "failed_reason", "finished_at", "heartbeat_at"])
    # A file from a bucket gets its error file written back beside it.
    transaction.on_commit(partial(upload_finished_announce, upload_id=upload.pk))


def _locked_owned(upload_id: int, token: str) -> Upload:
    upload = Upload.objects.select_for_update().get(pk=upload_id)
    if upload.run_token != token or upload.is_finished:
        raise RunSuperseded
    return upload


def _meter_keys() -> dict[str, MeterKeys]:
    return {
        meter.event_name: MeterKeys(
            event_name=meter.event_name,
            display_name=meter.display_name,
            customer_key=meter.customer_mapping_key,
            value_key=meter.value_settings_key,
            needs_value=meter.aggregation_formula != Meter.Formula.COUNT,
            active=meter.is_active,
        )
        for meter in Meter.objects.all()
    }


def _open_content(upload: Upload) -> tuple[IO[bytes], IO[bytes]]:
    """The stored file, and its content (gunzipped when it is gzip)."""
    binary = upload.file.storage.open(upload.file.name or "", "rb")
    try:
        return binary, open_decompressed(binary)
    except Exception:
        binary.close()
        raise


def _open_lines(upload: Upload) -> tuple[IO[bytes], Iterator[str]]:
    binary, content = _open_content(upload)
    lines = text_lines(content, max_bytes=max_upload_bytes(), max_line_bytes=max_line_bytes())
    return binary, lines


def _inspect(upload: Upload, pulse: Pulse) -> Inspection:
    """The validation pass over the stored file, CSV or JSON events."""
    if upload.file_format == Upload.Format.CSV:
        binary, lines = _open_lines(upload)
        try:
            return inspect(
                lines, max_line_bytes=max_line_bytes(), max_columns=max_columns(), pulse=pulse
            )
        finally:
            binary.close()
    binary, content = _open_content(upload)
    try:
        return json_inspect(
            content,
            file_format=upload.file_format,
            max_bytes=max_upload_bytes(),
            max_line_bytes=max_line_bytes(),
            max_columns=max_columns(),
            pulse=pulse,
        )
    finally:
        binary.close()


@contextmanager
def _data_records(upload: Upload) -> Iterator[Iterator[Record]]:
    """The stored file's records after its header row (for JSON events, each event as the
    values of the header the validation pass found), read while the context lasts."""
    if upload.file_format != Upload.Format.CSV:
        binary, content = _open_content(upload)
        try:
            yield json_records(
                content,
                file_format=upload.file_format,
                header=upload.header,
                max_bytes=max_upload_bytes(),
                max_line_bytes=max_line_bytes(),
            )
        finally:
            binary.close()
        return
    binary, lines = _open_lines(upload)
    try:
        record_iter = records(lines, max_line_bytes=max_line_bytes())
        header_read(record_iter)
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
        _process(upload, token, Pulse(upload_id, token))
    except CancelRequested:
        _cancelled(upload_id, token)
    except RunSuperseded:
        logger.info("Upload %s: a newer run took over or the job ended; stopping.", upload_id)


def _process(upload: Upload, token: str, pulse: Pulse) -> None:
    meters = _meter_keys()
    if not upload.file or not upload.file.storage.exists(upload.file.name or ""):
        _fail(upload.pk, token, "The stored file is missing, so it cannot be read.")
        return
    validated = _validate(upload, token, meters, pulse)
    if validated is None:
        return
    upload, header = validated
    try:
        with _occurrence_counter(upload, header, meters, pulse) as occurrences:
            builder = RowBuilder(
                header, meters, occurrences, line_prefix=upload.row_identifier_prefix()
            )
            _import_pass_begin(upload.pk, token)
            completed = _import(upload, token, builder, pulse)
    except FileProblem as error:
        # The first pass read the same bytes, so only a file changed underneath gets here.
        _fail(upload.pk, token, error.reason)
        return
    if completed:
        _succeed(upload.pk, token)


def _import_pass_begin(upload_id: int, token: str) -> None:
    """Mark when the import pass begins (after validation and any on-disk counting pass),
    with the rows read before it: the live rate and time left are this pass's."""
    with transaction.atomic():
        upload = _locked_owned(upload_id, token)
        upload.import_started_at = timezone.now()
        upload.import_start_rows = upload.rows_read
        upload.save(update_fields=["import_started_at", "import_start_rows"])


def _succeed(upload_id: int, token: str) -> None:
    with transaction.atomic():
        upload = _locked_owned(upload_id, token)
        status, reason = _outcome(upload)
        _finish(upload, status, now=timezone.now(), reason=reason)


def _outcome(upload: Upload) -> tuple[str, str]:
    """The status of a run that read the whole file, as its counts tell it, and why when it
    is not a success."""
    if upload.validate_only:
        return Upload.Status.VALIDATED, ""
    if not upload.rows_imported and upload.rows_failed:
        already = ""
        if upload.rows_duplicate:
            already = f" and {upload.rows_duplicate:,} were already recorded"
        fix = (
            "Fix the failed rows in the error file (also written to the bucket's errors/ "
            "folder) and put the corrected file into the bucket under a new name."
            if upload.batch.source == EventBatch.Source.S3
            else "Fix the failed rows below (download the error file) and upload it again."
        )
        return Upload.Status.FAILED, (
            f"No row was imported: {upload.rows_failed:,} rows failed{already}. {fix}"
        )
    if not upload.rows_imported and upload.rows_duplicate:
        return Upload.Status.NOTHING_NEW, "Nothing new: every row was already recorded."
    if upload.rows_failed:
        return Upload.Status.SUCCEEDED_WITH_ERRORS, ""
    return Upload.Status.SUCCEEDED, ""


def _cancelled(upload_id: int, token: str) -> None:
    """End a run whose job was cancelled (unless it ended already)."""
    with transaction.atomic():
        try:
            upload = _locked_owned(upload_id, token)
        except RunSuperseded:
            return
        _finish(upload, Upload.Status.CANCELLED, now=timezone.now())


def _fail(upload_id: int, token: str, reason: str) -> None:
    with transaction.atomic():
        upload = _locked_owned(upload_id, token)
        _finish(upload, Upload.Status.FAILED, now=timezone.now(), reason=reason)


def _validate(
    upload: Upload, token: str, meters: dict[str, MeterKeys], pulse: Pulse
) -> tuple[Upload, list[str]] | None:
    """Pass 1: the whole file read before anything is imported. The upload (as now saved,
    with its header and record count) and its header; None when it failed. A meter whose
    columns the file lacks fails only its own rows (``RowBuilder``); the whole file fails
    when no meter's rows could import."""
    try:
        inspection = _inspect(upload, pulse)
        used = [meters[name] for name in inspection.event_names if name in meters]
        active = [meter for meter in used if meter.active]
        missing = meter_columns_missing(inspection.header, active)
        problem = header_problems(inspection.header, active if len(missing) == len(active) else [])
    except FileProblem as error:
        problem = error.reason
        inspection = None
    if problem and upload.file_format != Upload.Format.CSV and "columns" in problem:
        problem += " (In JSON events, payload_<key> is the payload's field <key>.)"
    with transaction.atomic():
        upload = _locked_owned(upload.pk, token)
        if problem or inspection is None:
            _finish(upload, Upload.Status.FAILED, now=timezone.now(), reason=problem)
            return None
        upload.header = inspection.header
        upload.rows_total = inspection.records
        if not upload.validate_only:
            upload.status = Upload.Status.IMPORTING
        upload.heartbeat_at = timezone.now()
        upload.save(update_fields=["header", "rows_total", "status", "heartbeat_at"])
    return upload, inspection.header


@contextmanager
def _occurrence_counter(
    upload: Upload, header: list[str], meters: dict[str, MeterKeys], pulse: Pulse
) -> Iterator[Counter | None]:
    """The identical-row counter for the import: None (the row builder's own, in memory),
    or for a file too large for its memory one worked out on disk, in a scratch folder that
    lasts while the context does."""
    small = (upload.rows_total or 0) <= setting("USAGE_UPLOAD_COUNTER_MEMORY_ROWS", 5_000_000)
    if small:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="upload-counts-") as scratch:
        yield _occurrences_counted_on_disk(upload, header, meters, Path(scratch), pulse)


def _import(upload: Upload, token: str, builder: RowBuilder, pulse: Pulse) -> bool:
    """Pass 2: import chunk by chunk. Records an earlier run committed are read again only to
    keep the identical-row counts right. False: the run stopped (cancelled or superseded).
    ``pulse`` raises ``CancelRequested`` within a second of a cancellation; the writers then
    stop at once, their chunks in progress rolled back (``ChunkWriters.__exit__``)."""
    try:
        return _import_chunks(upload, token, builder, pulse)
    finally:
        pending_progress_clear(upload.pk)  # whatever the outcome: none is pending now


def _import_chunks(upload: Upload, token: str, builder: RowBuilder, pulse: Pulse) -> bool:
    committed = sorted((low, high) for low, high in upload.committed_ranges)
    position = 0
    # The chunks' many short-lived objects die by reference counting; see gc_paused.
    with (
        _data_records(upload) as record_iter,
        gc_paused(),
        _chunk_writers(upload.pk, token, upload.batch, pulse) as writers,
    ):
        for number, chunk in enumerate(chunked(record_iter, chunk_rows())):
            pulse()
            for start, part, done in _parts(position, chunk, committed):
                if not done and not writers.reserve():
                    return False
                built = builder.build_columns(part)
                if done:
                    continue
                if not writers.submit((start, built)):
                    return False
                del built
            position += len(chunk)
            if number % 50 == 49:
                gc.collect()  # what few cycles the chunks made
        return writers.close()


class _InlineWriter:
    """``ChunkWriters``' interface for no writer threads: the job's own thread commits each
    chunk as it is submitted."""

    def __init__(self, commit: Callable[..., bool]) -> None:
        self._commit = commit

    def reserve(self) -> bool:
        return True

    def submit(self, item: tuple[int, BuiltChunk]) -> bool:
        start, built = item
        return self._commit(built, start=start)

    def close(self) -> bool:
        return True

    def __enter__(self) -> _InlineWriter:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        pass


def _chunk_writers(
    upload_id: int, token: str, batch: EventBatch, pulse: Pulse
) -> ChunkWriters[tuple[int, BuiltChunk]] | _InlineWriter:
    """What commits the built chunks: writer threads, which take the ingestion core's
    identifier section in chunk order (``Turnstile``), or the job's own thread."""
    threads = _writer_threads()
    if not threads:
        return _InlineWriter(partial(_commit_chunk, upload_id, token, batch))
    turnstile = Turnstile()
    flag = wanted_flag()
    span = None
    if flag is not None:  # SQLite: chunks committed together, the live progress on the side
        span = partial(
            Span,
            seconds=float(settings.USAGE_UPLOAD_SQLITE_SPAN_SECONDS),
            cache_mb=int(settings.USAGE_UPLOAD_SQLITE_CACHE_MB),
            flag=flag,
        )

    def write(number: int, part: tuple[int, BuiltChunk]) -> bool:  # a writer thread
        start, built = part
        try:
            written = _commit_chunk(
                upload_id,
                token,
                batch,
                built,
                start=start,
                ids_in_turn=partial(turnstile.turn, number),
            )
        finally:
            turnstile.done(number)
        if written and span is not None:
            pending_progress_write(upload_id)
        return written

    return ChunkWriters(write, threads=threads, idle=pulse, span=span)


def _rejection_of(row: ParsedRow) -> RejectionInput:
    assert row.error is not None
    return RejectionInput(
        code=row.error.code,
        message=row.error.message,
        line=row.line,
        column=row.error.column,
        identifier=row.raw.get(IDENTIFIER_COLUMN, ""),
        event_name=row.raw.get("event_name", ""),
        raw=row.raw,
    )


def _occurrences_counted_on_disk(
    upload: Upload, header: list[str], meters: dict[str, MeterKeys], folder: Path, pulse: Pulse
) -> ExternalCounter:
    """An extra pass that builds every chunk as the import will, recording the identical-row
    keys on disk; returns the counter that then answers the import's counts."""
    counter = ExternalCounter(folder)
    recording = RowBuilder(header, meters, counter.recorder)
    with _data_records(upload) as record_iter, gc_paused():
        for chunk in chunked(record_iter, chunk_rows()):
            pulse()
            recording.build_columns(chunk)
    counter.finish(pulse=pulse)
    return counter


def _writer_threads() -> int:
    """How many threads commit chunks at once, each on its own connection; 0: the job's own
    thread does, between chunks (always so inside an enclosing transaction, which other
    connections could not see)."""
    if connection.in_atomic_block:
        return 0
    default = 2 if connection.vendor == "postgresql" else 1  # SQLite: one writer at a time
    return setting("USAGE_UPLOAD_WRITERS", default)


def _parts(
    position: int, chunk: list[Record], committed: list[tuple[int, int]]
) -> list[tuple[int, list[Record], bool]]:
    """``chunk`` (records from ``position`` on) cut where the committed ranges start and end:
    (start, records, committed) in order. Usually one part: chunk sizes stay the same."""
    end = position + len(chunk)
    parts: list[tuple[int, list[Record], bool]] = []
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


def _commit_chunk(
    upload_id: int,
    token: str,
    batch: EventBatch,
    built: BuiltChunk,
    *,
    start: int,
    ids_in_turn: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> bool:
    """Ingest one chunk and add it to the job's progress, in one transaction. False: stop
    (the job was cancelled; the chunk is not imported)."""
    try:
        with transaction.atomic():
            _commit_without_waiting_for_the_flush()
            run_check(upload_id, token)  # unlocked: saves the work of a stopped job
            parse_failures = [_rejection_of(row) for row in built.errors]
            if parse_failures:
                event_rejections_record(batch=batch, rejections=parse_failures)
            report = None
            if len(built.columns):
                report = meter_events_ingest_columns(
                    columns=built.columns, batch=batch, ids_in_turn=ids_in_turn
                )
                if built.fallbacks and report.duplicate_rows:
                    report = _new_usage_counted(batch, built, report)
            _progress_add(
                upload_id,
                token,
                start=start,
                built=built,
                report=report,
                parse_failures=len(parse_failures),
            )
            if report is not None and report.duplicate_rows:
                _duplicates_record(upload_id, start, built.columns, report.duplicate_rows)
    except CancelRequested:
        _cancelled(upload_id, token)
        return False
    return True


def _new_usage_counted(batch: EventBatch, built: BuiltChunk, report: IngestCounts) -> IngestCounts:
    """New usage: the rows whose derived identifier was taken already (identical rows an
    earlier file brought) are ingested again with their own identifier (the upload and the
    line), so they count; the report then covers both attempts. Only a row this upload
    committed before stays a duplicate."""
    fallbacks = built.fallbacks
    again = [row for row in report.duplicate_rows if row in fallbacks]
    if not again:
        return report
    columns = built.columns
    retry = EventColumns(
        [columns.event_names[row] for row in again],
        [columns.timestamps[row] for row in again],
        [fallbacks[row] for row in again],
        {key: [values[row] for row in again] for key, values in columns.payload.items()},
        [columns.lines[row] for row in again],
        [columns.raws[row] for row in again],
    )
    second = meter_events_ingest_columns(columns=retry, batch=batch)
    totals = dict(report.totals_by_meter)
    for meter_pk, total in second.totals_by_meter.items():
        mine = totals.get(meter_pk)
        totals[meter_pk] = (
            total
            if mine is None
            else MeterTotal(mine.event_count + total.event_count, mine.value_sum + total.value_sum)
        )
    retried = set(again)
    return IngestCounts(
        accepted=report.accepted + second.accepted,
        duplicates=report.duplicates - len(again) + second.duplicates,
        rejected=report.rejected + second.rejected,
        totals_by_meter=totals,
        duplicate_rows=[row for row in report.duplicate_rows if row not in retried]
        + [again[row] for row in second.duplicate_rows],
    )


def _duplicates_record(upload_id: int, start: int, columns: EventColumns, rows: list[int]) -> None:
    """One row for the chunk's duplicates, in its transaction (after its progress, which
    makes sure no other run committed the chunk): their lines and identifiers. Where each
    twin was recorded is looked up only when the duplicates are shown."""
    rows = sorted(rows)
    lines, identifiers = columns.lines, columns.identifiers
    UploadDuplicates.of_chunk(
        upload_id=upload_id,
        start=start,
        lines=[lines[index] for index in rows],
        identifiers=[identifiers[index] for index in rows],
    ).save(force_insert=True)


def _commit_without_waiting_for_the_flush() -> None:
    """Don't wait for the WAL flush of each chunk. Safe: the chunk's events, rollups and its
    place in the job's progress commit in one transaction, so a commit lost in a server crash
    loses them together and the retried run imports the chunk again; nothing is counted twice
    or skipped. (Only this transaction is affected; the job's final status still commits
    synchronously.)"""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")


def _progress_add(
    upload_id: int,
    token: str,
    *,
    start: int,
    built: BuiltChunk,
    report: IngestCounts | None,
    parse_failures: int,
) -> None:
    """Add a chunk's counts and its range of records to the job's progress, in the chunk's
    transaction."""
    # The job's row is locked last: chunks committing at once queue on it only for the
    # moment their progress takes. The decisive ownership check is this one.
    upload = _locked_owned(upload_id, token)
    if upload.cancel_requested_at is not None:
        raise CancelRequested
    ranges = _ranges_merged(upload.committed_ranges, start, start + built.records)
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
    upload.rows_failed += parse_failures
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
