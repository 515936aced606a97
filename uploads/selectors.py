"""Reads for CSV uploads: lists, progress figures, failed rows, the error file, templates."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from events.models import EventBatch, EventRejection, MeterEvent
from meters.models import Meter
from uploads.advice import advice_for
from uploads.models import S3Connector, S3Object, Upload, UploadDuplicates
from uploads.pulse import pending_progress_apply
from uploads.reading import escape_cell
from usage_portal.pagination import Page

ERROR_FILE_COLUMNS = ("line", "error_code", "error_message")


def upload_list() -> QuerySet[Upload]:
    return Upload.objects.select_related("uploaded_by", "reverted_by").order_by("-created", "-id")


def upload_get(*, pk: int) -> Upload:
    return Upload.objects.select_related(
        "uploaded_by", "reverted_by", "cancel_requested_by", "batch", "validated_upload"
    ).get(pk=pk)


@dataclass(frozen=True, slots=True)
class MeterTotalLine:
    meter: Meter | None
    meter_pk: int
    events: int
    value: Decimal

    @property
    def usage(self) -> Decimal | None:
        """What the rows add to the meter's usage: the events of a count meter, the values'
        sum of a sum meter; None for a last-value meter (its usage is its latest value, not
        a sum)."""
        formula = self.meter.aggregation_formula if self.meter else Meter.Formula.SUM
        if formula == Meter.Formula.COUNT:
            return Decimal(self.events)
        if formula == Meter.Formula.LAST:
            return None
        return self.value


@dataclass(frozen=True, slots=True)
class Progress:
    """What the live progress panel shows."""

    rows_total: int | None
    rows_read: int
    percent: int | None
    elapsed_seconds: int | None
    rows_per_second: int | None
    seconds_left: int | None
    meter_totals: list[MeterTotalLine]


def upload_pending_progress_show(*, upload: Upload) -> None:
    """On SQLite, show on ``upload`` (not saved) the progress its running job has written and
    not yet committed: the job commits several chunks at once (``uploads.pulse``)."""
    pending_progress_apply(upload)


def upload_progress(*, upload: Upload, now: datetime | None = None) -> Progress:
    now = now or timezone.now()
    end = upload.finished_at or now
    elapsed = (end - upload.started_at).total_seconds() if upload.started_at else None
    percent = None
    if upload.rows_total:
        percent = min(100, int(upload.rows_read * 100 / upload.rows_total))
    elif upload.is_finished and upload.status != Upload.Status.FAILED:
        percent = 100
    # The rows read are those of the last progress written (heartbeat_at, which each chunk's
    # progress sets): the rate is as of then, so it does not sink while a chunk is being
    # written, and the time left counts down from then.
    as_of = end
    if upload.is_active and upload.heartbeat_at and upload.import_started_at:
        as_of = min(end, max(upload.heartbeat_at, upload.import_started_at))
    rate = None  # this import pass's (see Upload.import_started_at)
    if upload.import_started_at and upload.rows_read > upload.import_start_rows:
        seconds = (as_of - upload.import_started_at).total_seconds()
        if seconds > 0:
            rate = int((upload.rows_read - upload.import_start_rows) / seconds)
    elif upload.import_started_at is None and not upload.is_active and elapsed and upload.rows_read:
        rate = int(upload.rows_read / elapsed)  # finished before the pass was marked
    left = None
    if rate and upload.rows_total and upload.is_active:
        since = (end - as_of).total_seconds()
        left = max(0, int((upload.rows_total - upload.rows_read) / rate - since))
    totals = upload.meter_total_values()
    meters = Meter.objects.in_bulk(list(totals))
    lines = [
        MeterTotalLine(meters.get(pk), pk, events, value)
        for pk, (events, value) in sorted(totals.items())
    ]
    return Progress(
        rows_total=upload.rows_total,
        rows_read=upload.rows_read,
        percent=percent,
        elapsed_seconds=int(elapsed) if elapsed is not None else None,
        rows_per_second=rate,
        seconds_left=left,
        meter_totals=lines,
    )


def upload_rejections(*, upload: Upload, code: str = "") -> QuerySet[EventRejection]:
    queryset = EventRejection.objects.filter(batch_id=upload.batch_id)
    if code:
        queryset = queryset.filter(code=code)
    return queryset.order_by("line", "id")


@dataclass(frozen=True, slots=True)
class CodeCount:
    code: str
    count: int
    advice: str  # what to do about it


def upload_rejection_codes(*, upload: Upload) -> list[CodeCount]:
    rows = (
        EventRejection.objects.filter(batch_id=upload.batch_id)
        .values("code")
        .annotate(count=Count("id"))
        .order_by("-count", "code")
    )
    return [CodeCount(row["code"], row["count"], advice_for(row["code"])) for row in rows]


ERROR_TABLE_MAX_COLUMNS = 8  # of the file's own, beside line, column, code and message


@dataclass(frozen=True, slots=True)
class ErrorRow:
    line: int | None
    column: str
    code: str
    message: str
    cells: list[str]  # the values of ``error_table_columns``, in order


def error_table_columns(*, upload: Upload) -> list[str]:
    """The file's columns the failed-rows table shows, named as the file names them:
    timestamp, event_name, identifier, and the customer and value columns of the meters the
    failed rows name. Not every column of a wide file (the error file keeps them all)."""
    present = set(upload.header)
    wanted = ["timestamp", "event_name", "identifier"]
    rejected = EventRejection.objects.filter(batch_id=upload.batch_id)
    names = list(rejected.values_list("event_name", flat=True).distinct()[:50])
    for meter in Meter.objects.filter(event_name__in=names).order_by("event_name"):
        wanted += [f"payload_{meter.customer_mapping_key}", f"payload_{meter.value_settings_key}"]
    if not names or len(wanted) == 3:  # no known meter: the file's payload columns
        wanted += [name for name in upload.header if name.startswith("payload_")]
    columns = [name for name in dict.fromkeys(wanted) if name in present]
    return columns[:ERROR_TABLE_MAX_COLUMNS]


def upload_error_rows(
    *, rejections: Sequence[EventRejection], columns: list[str]
) -> list[ErrorRow]:
    """The table's rows of ``rejections`` (fetched with ``upload_rejections_for_table``)."""
    return [
        ErrorRow(
            rejection.line,
            rejection.column,
            rejection.code,
            rejection.message,
            [
                "" if value is None else str(value)
                for value in (
                    getattr(rejection, f"cell_{position}") for position in range(len(columns))
                )
            ],
        )
        for rejection in rejections
    ]


def upload_rejections_for_table(
    *, upload: Upload, columns: list[str], code: str = ""
) -> QuerySet[EventRejection]:
    """``upload_rejections`` with only ``columns`` of each row's original values (a wide
    file's rows are never read whole for the page)."""
    cells = {f"cell_{n}": KeyTextTransform(name, "raw") for n, name in enumerate(columns)}
    return upload_rejections(upload=upload, code=code).defer("raw").annotate(**cells)


def error_file_header(*, upload: Upload) -> list[str]:
    """The upload's own columns (minus an earlier error file's), then line, code, message."""
    original = [name for name in upload.header if name not in ERROR_FILE_COLUMNS]
    return [*original, *ERROR_FILE_COLUMNS]


class _Echo:
    def write(self, value: str) -> str:
        return value


def upload_error_file_lines(*, upload: Upload) -> Iterator[str]:
    """The error file as CSV text, streamed: every failed row with its original values,
    safe to open in a spreadsheet, and accepted again as an upload once corrected."""
    header = error_file_header(upload=upload)
    original = header[: -len(ERROR_FILE_COLUMNS)]
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(header)  # the BOM makes Excel read UTF-8
    rows = upload_rejections(upload=upload).values_list("line", "code", "message", "raw")
    for line, code, message, raw in rows.iterator(chunk_size=2000):
        raw = raw or {}
        cells = [str(raw.get(name, "")) for name in original]
        cells += ["" if line is None else str(line), code, message]
        yield writer.writerow([escape_cell(cell) for cell in cells])


def meter_template_csv(*, meter: Meter) -> str:
    """A one-row example file for ``meter``, its headers built from the meter's keys."""
    header = ["timestamp", "event_name", f"payload_{meter.customer_mapping_key}"]
    example = [timezone.now().strftime("%Y-%m-%d"), meter.event_name, "cus_example"]
    if meter.aggregation_formula != Meter.Formula.COUNT:
        header.append(f"payload_{meter.value_settings_key}")
        example.append("1")
    writer = csv.writer(_Echo())
    return writer.writerow(header) + writer.writerow(example)


def upload_meters_for_templates() -> QuerySet[Meter]:
    return Meter.objects.filter(status=Meter.Status.ACTIVE).order_by("display_name")


def uploads_any_active(*, pks: list[int] | None = None) -> bool:
    queryset = Upload.objects.filter(status__in=Upload.ACTIVE_STATUSES)
    if pks is not None:
        queryset = queryset.filter(pk__in=pks)
    return queryset.exists()


# --- Duplicates: where each one's twin was recorded ---------------------------------------------
DUPLICATE_FILE_COLUMNS = ("line", "identifier", "recorded", "recorded_in_upload")
_TWINS_AT_ONCE = 2000  # identifiers looked up per query


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    """A duplicate row, and where the event with its identifier (its twin) was recorded."""

    line: int
    identifier: str
    recorded: str  # in words: "upload usage.csv, 2026-03-10 12:00 UTC, by Fiona"...
    twin_upload: Upload | None = None  # the upload it came in, linked from the table


def upload_duplicates(
    *, upload: Upload, number: int | None, per_page: int = 50
) -> Page[DuplicateRow]:
    """Page ``number`` (1-based) of the upload's duplicate rows in file order, their twins
    found for this page only."""
    page_number = max(1, number or 1)
    offset = (page_number - 1) * per_page
    entries = _duplicate_entries(upload, offset, per_page + 1)
    rows = _twins_described(upload, entries[:per_page])
    return Page(items=rows, number=page_number, per_page=per_page, has_next=len(entries) > per_page)


def _duplicate_entries(upload: Upload, offset: int, limit: int) -> list[tuple[int, str]]:
    """(line, identifier) of duplicates ``offset`` to ``offset + limit``, reading only the
    chunks that hold them."""
    chunks = UploadDuplicates.objects.filter(upload=upload).order_by("start")
    wanted: list[int] = []
    before = seen = 0  # duplicates in the chunks before the first one wanted
    for pk, rows in chunks.values_list("pk", "rows"):
        if seen + rows > offset and seen < offset + limit:
            before = before if wanted else seen
            wanted.append(pk)
        seen += rows
    entries: list[tuple[int, str]] = []
    for chunk in chunks.filter(pk__in=wanted):
        entries += chunk.entries()
    return entries[offset - before : offset - before + limit]


def _all_duplicate_entries(upload: Upload) -> Iterator[list[tuple[int, str]]]:
    """Every (line, identifier) of the upload's duplicates, in batches, in file order."""
    batch: list[tuple[int, str]] = []
    chunks = UploadDuplicates.objects.filter(upload=upload).order_by("start")
    for chunk in chunks.iterator(chunk_size=4):
        batch += chunk.entries()
        while len(batch) >= _TWINS_AT_ONCE:
            yield batch[:_TWINS_AT_ONCE]
            batch = batch[_TWINS_AT_ONCE:]
    if batch:
        yield batch


def _twins_described(upload: Upload, entries: list[tuple[int, str]]) -> list[DuplicateRow]:
    """Each duplicate with where its twin was recorded: the event holding its identifier, or
    failing that the one a revert released it from, or else an earlier row of this file (a
    validate-only run stores nothing)."""
    identifiers = [identifier for _, identifier in entries]
    fields = (
        "identifier",
        "released_identifier",
        "batch_id",
        "line",
        "cancelled_at",
        "cancelled_by_id",
    )
    held = {
        row["identifier"]: row
        for row in MeterEvent.objects.filter(identifier__in=identifiers).values(*fields)
    }
    released = {
        row["released_identifier"]: row
        for row in MeterEvent.objects.filter(released_identifier__in=set(identifiers) - held.keys())
        .order_by("cancelled_at")
        .values(*fields)
    }  # the latest revert wins
    events = [*held.values(), *released.values()]
    batches = EventBatch.objects.in_bulk({event["batch_id"] for event in events})
    uploads = {
        found.batch_id: found
        for found in Upload.objects.filter(batch_id__in=batches).select_related("uploaded_by")
    }
    users = User.objects.in_bulk(
        {batch.user_id for batch in batches.values() if batch.user_id}
        | {event["cancelled_by_id"] for event in events if event["cancelled_by_id"]}
    )
    rows = []
    for line, identifier in entries:
        twin = held.get(identifier)
        if twin is not None:
            recorded, twin_upload = _recorded(upload, twin, batches, uploads, users)
        elif identifier in released:
            twin_upload = uploads.get(released[identifier]["batch_id"])
            name = twin_upload.original_name if twin_upload else "another upload"
            recorded = f"cancelled by the revert of upload {name}"
            if twin_upload is not None:
                recorded += f" ({twin_upload.pk})"
        else:
            recorded, twin_upload = "earlier in this file", None
        rows.append(DuplicateRow(line, identifier, recorded, twin_upload))
    return rows


def _recorded(
    upload: Upload,
    twin: dict[str, Any],
    batches: dict[int, EventBatch],
    uploads: dict[int, Upload],
    users: dict[int, User],
) -> tuple[str, Upload | None]:
    """Where the stored ``twin`` was recorded, in words, and its upload if it came in one."""
    batch = batches[twin["batch_id"]]
    twin_upload = uploads.get(batch.pk)
    if batch.pk == upload.batch_id:
        recorded, twin_upload = f"earlier in this file (line {twin['line']})", None
    elif twin_upload is not None:
        recorded = (
            f"upload {twin_upload.pk} ({twin_upload.original_name}), "
            f"{twin_upload.created:%Y-%m-%d %H:%M} UTC, "
            f"by {_name(twin_upload.uploaded_by)}"
        )
    else:
        who = _name(users.get(batch.user_id)) if batch.user_id else "no user"
        recorded = (
            f"{batch.get_source_display()} batch {batch.pk}, "
            f"{batch.created:%Y-%m-%d %H:%M} UTC, by {who}"
        )
    if twin["cancelled_at"] is not None:
        canceller = users.get(twin["cancelled_by_id"])
        recorded += (
            f"; cancelled on {twin['cancelled_at']:%Y-%m-%d %H:%M} UTC by {_name(canceller)}"
        )
    return recorded, twin_upload


def _name(user: User | None) -> str:
    if user is None:
        return "someone no longer known"
    return user.get_full_name() or user.username


def upload_duplicate_file_lines(*, upload: Upload, base_url: str = "") -> Iterator[str]:
    """The duplicates as CSV text, streamed: line, identifier, where the twin was recorded,
    and the page of the upload it came in (``base_url`` makes the link absolute)."""
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(DUPLICATE_FILE_COLUMNS)
    for entries in _all_duplicate_entries(upload):
        for row in _twins_described(upload, entries):
            link = base_url + row.twin_upload.get_absolute_url() if row.twin_upload else ""
            cells = [str(row.line), row.identifier, row.recorded, link]
            yield writer.writerow([escape_cell(cell) for cell in cells])


def connector_list() -> QuerySet[S3Connector]:
    return S3Connector.objects.order_by("name")


def connector_objects(*, connector: S3Connector) -> QuerySet[S3Object]:
    """Every file the connector found, newest first, with its upload."""
    return (
        S3Object.objects.filter(connector=connector)
        .select_related("upload")
        .order_by("-found_at", "-id")
    )


def connector_any_active(*, connector: S3Connector) -> bool:
    """A file of the connector is waiting for its download or being imported."""
    return (
        S3Object.objects.filter(connector=connector, state=S3Object.State.FOUND).exists()
        or S3Object.objects.filter(
            connector=connector, upload__status__in=Upload.ACTIVE_STATUSES
        ).exists()
    )
