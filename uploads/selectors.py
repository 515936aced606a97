"""Reads for CSV uploads: lists, progress figures, failed rows, the error file, templates."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from events.models import EventRejection
from meters.models import Meter
from uploads.advice import advice_for
from uploads.models import Upload
from uploads.reading import escape_cell

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


def upload_progress(*, upload: Upload, now: datetime | None = None) -> Progress:
    now = now or timezone.now()
    end = upload.finished_at or now
    elapsed = (end - upload.started_at).total_seconds() if upload.started_at else None
    percent = None
    if upload.rows_total:
        percent = min(100, int(upload.rows_read * 100 / upload.rows_total))
    elif upload.is_finished and upload.status != Upload.Status.FAILED:
        percent = 100
    rate = int(upload.rows_read / elapsed) if elapsed and upload.rows_read else None
    left = None
    if rate and upload.rows_total and upload.is_active:
        left = int((upload.rows_total - upload.rows_read) / rate)
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
