"""The ingestion core's public types: what sources hand in and what they get back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from django.core.exceptions import ValidationError

from events.models import EventBatch, MeterEvent


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Code(StrEnum):
    IDENTIFIER_TOO_LONG = "identifier_too_long"
    INVALID_IDENTIFIER = "invalid_identifier"
    INVALID_PAYLOAD = "invalid_payload"
    NO_METER = "no_meter"
    ARCHIVED_METER = "archived_meter"
    NO_CUSTOMER_DEFINED = "meter_event_no_customer_defined"
    CUSTOMER_NOT_FOUND = "meter_event_customer_not_found"
    VALUE_NOT_FOUND = "meter_event_value_not_found"
    INVALID_VALUE = "meter_event_invalid_value"
    VALUE_TOO_MANY_DIGITS = "meter_event_value_too_many_digits"
    TIMESTAMP_TOO_FAR_IN_PAST = "timestamp_too_far_in_past"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    DUPLICATE_CONFLICT = "duplicate_meter_event_conflict"


@dataclass(frozen=True, slots=True)
class EventInput:
    """One event as a source received it. Payload values are strings, as on Stripe's wire."""

    event_name: str
    payload: Mapping[str, str]
    identifier: str | None = None  # None: the core generates one
    timestamp: datetime | None = None  # None: now. Must be timezone-aware.
    line: int | None = None  # the line in the source file, for CSV and S3
    raw: Mapping[str, str] | None = None  # the original row, kept with a rejection


@dataclass(frozen=True, slots=True)
class EventResult:
    outcome: Outcome
    identifier: str
    code: str = ""
    message: str = ""
    param: str = ""  # the offending field, e.g. "payload[value]" or "timestamp"
    meter_pk: int | None = None
    value: Decimal | None = None


@dataclass(slots=True)
class MeterTotal:
    event_count: int = 0
    value_sum: Decimal = field(default_factory=Decimal)


@dataclass(slots=True)
class IngestReport:
    batch: EventBatch
    results: list[EventResult]
    totals_by_meter: dict[int, MeterTotal]
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    duplicate_rows: list[int] = field(default_factory=list)  # their indices in ``results``


@dataclass(frozen=True, slots=True)
class RejectionInput:
    """A rejection found by a source before the core (e.g. an unparseable CSV timestamp)."""

    code: str
    message: str
    line: int | None = None
    column: str = ""
    identifier: str = ""
    event_name: str = ""
    customer_ref: str = ""
    raw: Mapping[str, Any] | None = None


@dataclass(slots=True)
class EventColumns:
    """Many events in columns, as a file source reads them: the same fields as ``EventInput``,
    without an object per event. ``payload`` maps each payload key to its values, one per
    event, stripped, with "" where the event has none."""

    event_names: list[str]
    timestamps: list[int]  # Unix seconds (UTC)
    identifiers: list[str]  # "": the core generates one
    payload: dict[str, list[str]]
    lines: list[int]
    raws: Sequence[Mapping[str, str]]  # the original rows, kept with a rejection
    # Every identifier was derived by the source from the event's content (event name,
    # customer, timestamp, value), so equal identifiers mean equal content.
    content_addressed: bool = False

    def __len__(self) -> int:
        return len(self.event_names)

    def event_input(self, index: int) -> EventInput:
        payload = {key: values[index] for key, values in self.payload.items() if values[index]}
        return EventInput(
            event_name=self.event_names[index],
            payload=payload,
            identifier=self.identifiers[index] or None,
            timestamp=datetime.fromtimestamp(self.timestamps[index], tz=UTC),
            line=self.lines[index],
            raw=self.raws[index],
        )


@dataclass(slots=True)
class IngestCounts:
    """What ``meter_events_ingest_columns`` did: counts, not one result per event, and which
    rows were duplicates (their indices in the columns, in no set order), so a source can
    say where each came from."""

    accepted: int
    duplicates: int
    rejected: int
    totals_by_meter: dict[int, MeterTotal]
    duplicate_rows: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ManualEntryResult:
    result: EventResult
    event: MeterEvent | None  # the stored event (also for a duplicate), None when rejected


class EventCancelError(ValidationError):
    pass
