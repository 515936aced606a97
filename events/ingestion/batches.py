"""Batches, and the rejections recorded with them as staff see them and error files repeat
them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError

from events.ingestion.lookups import customers_like
from events.ingestion.rules import clean
from events.ingestion.types import Code, EventInput, RejectionInput
from events.models import EventBatch, EventRejection
from meters.models import Meter


def event_batch_create(
    *, source: str, user: AbstractBaseUser | None = None, dry_run: bool = False
) -> EventBatch:
    if source not in EventBatch.Source.values:
        raise ValidationError(f"Unknown event source {source!r}.", code="invalid_source")
    return EventBatch.objects.create(source=source, user=user, dry_run=dry_run)  # type: ignore[misc]


def event_rejections_record(*, batch: EventBatch, rejections: Iterable[RejectionInput]) -> int:
    rows = [
        EventRejection(
            batch=batch,
            line=item.line,
            column=item.column[:255],
            code=item.code,
            message=item.message,
            identifier=item.identifier[:255],
            event_name=item.event_name[:255],
            customer_ref=item.customer_ref[:255],
            raw=_filled(item.raw or {}),
        )
        for item in rejections
    ]
    EventRejection.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


# Sources whose rows are a file's: their payload fields are the file's payload_<key> columns.
FILE_SOURCES = (EventBatch.Source.CSV, EventBatch.Source.S3)
_PAYLOAD_PARAM = re.compile(r"payload\[([^\]]*)\]")


def rejection_of(
    batch: EventBatch, event: EventInput, code: Code, message: str, param: str, meter: Meter | None
) -> EventRejection:
    """The stored record of a refused event, as staff see it and the error file repeats it.
    A file's row names its columns as the file does (``payload_value``, not
    ``payload[value]``)."""
    customer_ref = clean(event.payload.get(meter.customer_mapping_key)) if meter else ""
    if batch.source in FILE_SOURCES:
        param, message = _as_file_names(code, message, param)
    return EventRejection(
        batch=batch,
        line=event.line,
        column=_storable(param),
        code=code.value,
        message=_storable(message),
        identifier=_storable((event.identifier or "")[:255]),
        event_name=_storable(clean(event.event_name)[:255]),
        meter=meter,
        customer_ref=_storable(customer_ref[:255]),
        raw=_raw_of(event),
    )


def _as_file_names(code: Code, message: str, param: str) -> tuple[str, str]:
    """The column and message of a file's refused row, its payload fields named as the
    file's columns."""
    column = _PAYLOAD_PARAM.sub(r"payload_\1", param)
    if code == Code.NO_CUSTOMER_DEFINED:
        return column, f"{column} is empty: fill in the customer's ID."
    if code == Code.VALUE_NOT_FOUND:
        return column, f"{column} is empty: fill in the value (a number)."
    if column.startswith("payload_"):
        message = message.replace("in the event payload", f"in {column}")
    return column, _PAYLOAD_PARAM.sub(r"payload_\1", message)


def rejections_hint(rejections: Iterable[EventRejection]) -> dict[str, str]:
    """Add "Did you mean …?" to the refusals of unknown customers whose ID matches an
    existing one ignoring case (one query for them all); the suggestions, by customer ID."""
    unknown = [r for r in rejections if r.code == Code.CUSTOMER_NOT_FOUND and r.customer_ref]
    if not unknown:
        return {}
    suggestions = customers_like({rejection.customer_ref for rejection in unknown})
    for rejection in unknown:
        if (suggestion := suggestions.get(rejection.customer_ref)) is not None:
            rejection.message += f" Did you mean {suggestion}?"
    return suggestions


def _storable(text: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold NUL: show it as U+FFFD in stored rejections."""
    return text.replace("\x00", "\ufffd") if isinstance(text, str) else text


def _filled(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A file row's values without its empty cells: the error file and the page read a
    missing column as empty, and a wide file's rejected rows (mostly empty cells) then
    store a few values each rather than one per column."""
    return {key: value for key, value in raw.items() if value != ""}


def _raw_of(event: EventInput) -> dict[str, Any]:
    if event.raw is not None:
        raw = _filled(event.raw)
    else:
        raw = {"event_name": event.event_name, "identifier": event.identifier or ""}
        raw["timestamp"] = event.timestamp.isoformat() if event.timestamp else ""
        raw.update({f"payload[{k}]": v for k, v in event.payload.items()})
    return {_storable(k): _storable(v) for k, v in raw.items()}
