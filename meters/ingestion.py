"""The ingestion core: the one way usage events enter the system.

Every source (manual form, CSV upload, HTTP API, S3) builds ``EventInput`` objects and calls
``meter_events_ingest``. It validates each event with Stripe's error codes, deduplicates by
identifier (forever, not just 24 hours), writes accepted events and their hourly rollups in
one transaction, records rejections, and returns one ``EventResult`` per input, in order.

INTERFACE CONTRACT (implemented by the ingestion-core work; other modules code against it):

    batch = event_batch_create(source=EventBatch.Source.CSV, user=user, dry_run=False)
    report = meter_events_ingest(events=[EventInput(...), ...], batch=batch)
    report.results[i].outcome in {Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.REJECTED}
    report.accepted / report.duplicates / report.rejected  -> int counts
    report.totals_by_meter -> {meter_pk: MeterTotal(event_count, value_sum)} of accepted events
    meter_event_cancel(event=..., user=...)
    event_batch_cancel(batch=..., user=...) -> number of events cancelled
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


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
