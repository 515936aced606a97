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
    event_rejections_record(batch=..., rejections=[RejectionInput(...)])  # a source's own
        parse failures (bad timestamp format...), stored like the core's rejections

DECISIONS

Validation. The first failing check decides the code, in this order: identifier length
(``identifier_too_long``, more than 100 characters), ``no_meter``, ``archived_meter``,
``meter_event_no_customer_defined``, ``meter_event_customer_not_found``,
``meter_event_value_not_found``, ``meter_event_invalid_value``,
``meter_event_value_too_many_digits``, ``timestamp_too_far_in_past``,
``timestamp_in_future``. Payload values are strings; surrounding whitespace is ignored and an
empty string counts as missing.

Values. A value is a plain decimal number (``12``, ``-3.5``, ``.5``, ``1e3``); NaN, Infinity,
thousands separators and underscores are ``meter_event_invalid_value``. Significant digits
are counted on the normalised number (leading zeros and trailing fractional zeros do not
count: ``0.0012`` has 2, ``1.500`` has 2, ``1000000000000000`` has 1 but
``1000000000000001`` has 16). Values whose magnitude lies outside 1e-30..1e30 are invalid.
Count meters need no value: they count events. A count meter's event stores the value it was
given (validated like any other) or 1 when it has none; only the number of events counts.

Timestamps are timezone-aware (naive ones are a programming error: ``ValueError``), stored in
UTC truncated to the second. Missing: now. The window is
``settings.USAGE_TIMESTAMP_MAX_AGE_DAYS`` days back and
``settings.USAGE_TIMESTAMP_MAX_FUTURE_SECONDS`` ahead of ``now``.

Identifiers. Missing: ``evt_`` + 32 hex digits of a uuid4. Unique forever. An event whose
identifier is already stored (or appeared earlier in the same batch, where the first valid
one wins) is a ``duplicate`` when its content is the same, and a rejection with
``duplicate_meter_event_conflict`` otherwise. SAME CONTENT means the same meter (event
name), the same customer, the same value (numerically: ``1.0`` equals ``1``) and the same
timestamp (to the second) -- the timestamp is not compared when the new event has none,
so a retried "now" event is still a duplicate. Other payload keys do NOT count: they are not
metered. A rejected event claims no identifier. A cancelled event keeps its identifier:
sending it again is a duplicate (or a conflict) and does not revive it.

Receipt order. Event ids are allocated in input order (PostgreSQL: from the sequence before
the insert), so "most recently received" means the greatest id, also within one batch.

Rollups. ``UsageRollup`` per (meter, customer, UTC hour) holds the sum and count of the
counted events (not cancelled, not superseded) and the "last" one: the counted event with
the greatest (timestamp, id). Meters with an ``event_time_window`` (hour or day) count only
the most recently received non-cancelled event per (customer, window); the others are
``superseded``. Cancelling that event makes the most recently received non-cancelled event
of its window count again. Rollups are written in the same transaction as the events.
Cancelling events of raw meters subtracts them from their hours and, where the hour's "last"
event was cancelled, reads the hour's new last event; windows of pre-aggregated meters are
recomputed from their events. Either way the rollups stay exact.

Concurrency (PostgreSQL). Events are inserted in identifier order with
``ON CONFLICT (identifier) DO NOTHING``; whatever was not inserted is compared with the
committed row. Rollups of raw meters are then upserted in sorted (meter, customer, hour)
order, which takes their row locks in that order. For windowed meters one rollup row per
(meter, customer, window start) is first created if missing and locked with ``FOR UPDATE``
in sorted key order, before supersession and rollups of the window are recomputed.
Cancellation locks every affected rollup key the same way, in the same order, before it
touches the events.
Cancellations are audited (``AuditEntry`` for the event, "events.meterevent", or the batch,
"events.eventbatch", named as ``usage_portal.audit.audit_target`` names every object). Rollup
rows with zero events can therefore remain on PostgreSQL; the selectors treat them as empty.

Dry runs (``batch.dry_run``) validate and deduplicate exactly like real runs (against stored
events and within the batch) and record rejections, but write no events and no rollups.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from customers.models import Customer
from events.models import EventBatch, EventRejection, MeterEvent, StoredIdentifierSet, UsageRollup
from events.signals import usage_changed_announce
from meters.models import Meter
from usage_portal.audit import audit_record
from usage_portal.models import AuditEntry

MAX_IDENTIFIER_LENGTH = 100
MAX_VALUE_DIGITS = 15
_MAX_VALUE_EXPONENT = 30
_VALUE_PATTERN = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_IN_CHUNK = 500  # parameters per IN (...) on SQLite
_JSON = json.JSONEncoder(separators=(",", ":"), default=str)  # reused: C encoder, no setup


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
    """What ``meter_events_ingest_columns`` did: counts, not one result per event."""

    accepted: int
    duplicates: int
    rejected: int
    totals_by_meter: dict[int, MeterTotal]


# --- Batches ---------------------------------------------------------------------------------
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
            raw=dict(item.raw or {}),
        )
        for item in rejections
    ]
    EventRejection.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


# --- Validation ------------------------------------------------------------------------------
@dataclass(slots=True)
class _Candidate:
    """An event that passed validation and waits for deduplication and storage."""

    index: int
    identifier: str
    meter: Meter
    customer_id: int
    timestamp: datetime
    timestamp_given: bool
    value: Decimal
    payload: dict[str, Any]
    line: int | None
    event_id: int | None = None

    @property
    def payload_json(self) -> str:
        # Encoded only for events that get stored: a re-sent file's duplicates never need it.
        return _JSON.encode(self.payload)

    def same_content(
        self, meter_id: int, customer_id: int, timestamp: datetime, value: Any
    ) -> bool:
        return self.differences(meter_id, customer_id, timestamp, value) == []

    def differences(
        self, meter_id: int, customer_id: int, timestamp: datetime, value: Any
    ) -> list[str]:
        return _content_differences(
            (self.meter.pk, self.customer_id, self.timestamp, self.value),
            (meter_id, customer_id, timestamp, value),
            timestamps=self.timestamp_given,
        )


def _content_differences(
    mine: tuple[int, int, Any, Any], theirs: tuple[int, int, Any, Any], *, timestamps: bool = True
) -> list[str]:
    """What differs between two events' (meter id, customer id, timestamp, value): SAME
    CONTENT in the module doc. Values compare as numbers; ``timestamps=False`` leaves the
    timestamp out (an event sent without one)."""
    different = []
    if theirs[0] != mine[0]:
        different.append("event_name")
    if theirs[1] != mine[1]:
        different.append("customer")
    if timestamps and theirs[2] != mine[2]:
        different.append("timestamp")
    if Decimal(theirs[3]) != Decimal(mine[3]):
        different.append("value")
    return different


class _Rejected(Exception):
    def __init__(self, code: Code, message: str, param: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def new_identifier() -> str:
    return "evt_" + uuid.uuid4().hex


def value_parse(raw: str) -> Decimal:
    """The value of a payload string, or ``_Rejected`` with Stripe's code."""
    text = raw.strip()
    if text.isascii() and text.isdigit():  # the common case: a plain whole number
        significant = text.lstrip("0")
        if len(significant) <= _MAX_VALUE_EXPONENT and len(significant.rstrip("0")) <= (
            MAX_VALUE_DIGITS
        ):
            return Decimal(text)
    head, dot, tail = text.partition(".")
    if dot and text.isascii() and head.isdigit() and tail.isdigit():  # plain "123.45"
        whole = head.lstrip("0")
        if (
            len(whole) <= _MAX_VALUE_EXPONENT
            and len(tail) <= _MAX_VALUE_EXPONENT
            and len((whole + tail).lstrip("0").rstrip("0")) <= MAX_VALUE_DIGITS
        ):
            return Decimal(text)
    if not _VALUE_PATTERN.match(text):
        raise _Rejected(
            Code.INVALID_VALUE,
            f"The value in the event payload must be a number. Received {raw!r}.",
        )
    try:
        value = Decimal(text)
    except InvalidOperation as error:  # pragma: no cover - the pattern admits only numbers
        raise _Rejected(Code.INVALID_VALUE, f"Received {raw!r}.") from error
    normalized = value.normalize()
    if value != 0 and abs(normalized.adjusted()) > _MAX_VALUE_EXPONENT:
        raise _Rejected(
            Code.INVALID_VALUE,
            f"The value in the event payload is out of range. Received {text}.",
        )
    if len(normalized.as_tuple().digits) > MAX_VALUE_DIGITS:
        raise _Rejected(
            Code.VALUE_TOO_MANY_DIGITS,
            f"The value in the event payload can have at most {MAX_VALUE_DIGITS} digits. "
            f"Received {text}.",
        )
    # Keep the written scale ("2.50"), but spell large exponents out ("1E+3" -> 1000).
    if value.as_tuple().exponent > 0:  # type: ignore[operator]
        value = value.quantize(Decimal(1))
    return value


def _clean(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _duration_words(seconds: int) -> str:
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


@dataclass(slots=True)
class _Context:
    now: datetime
    oldest: datetime
    newest: datetime
    meters: dict[str, Meter]
    customers: dict[str, int]


def _validate(index: int, event: EventInput, ctx: _Context) -> _Candidate:
    identifier = event.identifier if event.identifier and event.identifier.strip() else None
    if identifier is not None:
        if len(identifier) > MAX_IDENTIFIER_LENGTH:
            raise _Rejected(
                Code.IDENTIFIER_TOO_LONG,
                f"The identifier can have at most {MAX_IDENTIFIER_LENGTH} characters. "
                f"Received {len(identifier)} characters.",
                "identifier",
            )
        if "\x00" in identifier:
            raise _Rejected(
                Code.INVALID_IDENTIFIER, "The identifier contains a NUL character.", "identifier"
            )
    event_name = event.event_name
    meter = ctx.meters.get(event_name)
    if meter is None:
        event_name = _clean(event_name)
        meter = ctx.meters.get(event_name)
    if meter is None:
        message = (
            f"No meter was found matching event_name {event_name}."
            if event_name
            else "The event has no event_name."
        )
        raise _Rejected(Code.NO_METER, message, "event_name")
    if not meter.is_active:
        raise _Rejected(
            Code.ARCHIVED_METER,
            f"The meter {meter.display_name} ({meter.meter_id}) for event_name {event_name} "
            "is inactive and accepts no events.",
            "event_name",
        )
    payload = event.payload
    customer_key = meter.customer_mapping_key
    customer_ref = payload.get(customer_key)
    customer_ref = customer_ref.strip() if isinstance(customer_ref, str) else _clean(customer_ref)
    if not customer_ref:
        raise _Rejected(
            Code.NO_CUSTOMER_DEFINED,
            f"Customer mapping key {customer_key} not found in payload.",
            f"payload[{customer_key}]",
        )
    customer_id = ctx.customers.get(customer_ref)
    if customer_id is None:
        raise _Rejected(
            Code.CUSTOMER_NOT_FOUND,
            f"No customer was found with ID {customer_ref}.",
            f"payload[{customer_key}]",
        )
    value_key = meter.value_settings_key
    value_text = payload.get(value_key)
    value_text = value_text.strip() if isinstance(value_text, str) else _clean(value_text)
    if not value_text:
        if meter.aggregation_formula != Meter.Formula.COUNT:
            raise _Rejected(
                Code.VALUE_NOT_FOUND,
                f"Value key {value_key} not found in payload.",
                f"payload[{value_key}]",
            )
        value = Decimal(1)
    else:
        try:
            value = value_parse(value_text)
        except _Rejected as rejected:
            rejected.param = f"payload[{value_key}]"
            raise
    timestamp = event.timestamp
    if timestamp is None:
        timestamp = ctx.now.replace(microsecond=0)
    elif timestamp.tzinfo is not UTC or timestamp.microsecond:
        if timezone.is_naive(timestamp):
            raise ValueError("EventInput.timestamp must be timezone-aware.")
        timestamp = timestamp.astimezone(UTC).replace(microsecond=0)
    if timestamp < ctx.oldest:
        raise _Rejected(
            Code.TIMESTAMP_TOO_FAR_IN_PAST,
            f"The timestamp {timestamp:%Y-%m-%d %H:%M:%S} UTC is more than "
            f"{settings.USAGE_TIMESTAMP_MAX_AGE_DAYS} days in the past.",
            "timestamp",
        )
    if timestamp > ctx.newest:
        raise _Rejected(
            Code.TIMESTAMP_IN_FUTURE,
            f"The timestamp {timestamp:%Y-%m-%d %H:%M:%S} UTC is more than "
            f"{_duration_words(settings.USAGE_TIMESTAMP_MAX_FUTURE_SECONDS)} in the future.",
            "timestamp",
        )
    if _payload_has_nul(payload):
        raise _Rejected(Code.INVALID_PAYLOAD, "The payload contains a NUL character.", "payload")
    return _Candidate(
        index=index,
        identifier=identifier or new_identifier(),
        meter=meter,
        customer_id=customer_id,
        timestamp=timestamp,
        timestamp_given=event.timestamp is not None,
        value=value,
        payload=dict(payload),
        line=event.line,
    )


def _payload_has_nul(payload: Mapping[str, Any]) -> bool:
    """Whether the payload's JSON would contain ``\\u0000`` (PostgreSQL's jsonb refuses it).

    For string keys and values that is exactly: some string holds a NUL, or the text
    ``\\u0000`` (whose backslash JSON doubles, leaving ``\\u0000`` in the output). Joined
    with U+0001, which JSON escapes, no match can span two strings."""
    try:
        text = "\x01".join((*payload.keys(), *payload.values()))
    except TypeError:  # not all strings (an API caller's numbers): ask the encoder
        return "\\u0000" in _JSON.encode(payload)
    return "\x00" in text or "\\u0000" in text


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load_context(events: Sequence[EventInput], now: datetime) -> _Context:
    cleaned = {name: _clean(name) for name in {event.event_name for event in events}}
    meters = _meters_named(cleaned.values())
    key_of = {
        name: meters[clean].customer_mapping_key
        for name, clean in cleaned.items()
        if clean in meters
    }
    refs: set[str] = set()
    for event in events:
        key = key_of.get(event.event_name)
        if key is not None:
            refs.add(_clean(event.payload.get(key)))
    return _context_build(now, meters, refs)


def _meters_named(names: Iterable[str]) -> dict[str, Meter]:
    # Names and IDs with NUL match nothing (and PostgreSQL refuses them as parameters).
    usable = {name for name in names if name and "\x00" not in name}
    meters: dict[str, Meter] = {}
    for chunk in _chunks(sorted(usable), _IN_CHUNK):
        meters.update((m.event_name, m) for m in Meter.objects.filter(event_name__in=chunk))
    return meters


def _context_build(now: datetime, meters: dict[str, Meter], refs: Iterable[str]) -> _Context:
    usable = {ref for ref in refs if ref and "\x00" not in ref}
    customers: dict[str, int] = {}
    for chunk in _chunks(sorted(usable), _IN_CHUNK):
        customers.update(
            Customer.objects.filter(external_id__in=chunk).values_list("external_id", "pk")
        )
    oldest, newest = _accepted_window(now)
    return _Context(now=now, oldest=oldest, newest=newest, meters=meters, customers=customers)


def _accepted_window(now: datetime) -> tuple[datetime, datetime]:
    """The oldest and newest timestamp an event may have."""
    return (
        now - timedelta(days=settings.USAGE_TIMESTAMP_MAX_AGE_DAYS),
        now + timedelta(seconds=settings.USAGE_TIMESTAMP_MAX_FUTURE_SECONDS),
    )


def _accepted_seconds(now: datetime) -> tuple[int, int]:
    """``_accepted_window`` in whole Unix seconds: the first one not before the oldest, the
    last one not after the newest."""
    oldest, newest = _accepted_window(now)
    return int(oldest.timestamp()) + (1 if oldest.microsecond else 0), int(newest.timestamp())


def _storable(text: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold NUL: show it as U+FFFD in stored rejections."""
    return text.replace("\x00", "\ufffd") if isinstance(text, str) else text


def _raw_of(event: EventInput) -> dict[str, Any]:
    if event.raw is not None:
        raw = dict(event.raw)
    else:
        raw = {"event_name": event.event_name, "identifier": event.identifier or ""}
        raw["timestamp"] = event.timestamp.isoformat() if event.timestamp else ""
        raw.update({f"payload[{k}]": v for k, v in event.payload.items()})
    return {_storable(k): _storable(v) for k, v in raw.items()}


# --- Ingestion -------------------------------------------------------------------------------
@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch of events is handled.

    A large batch makes hundreds of thousands of short-lived objects (events, candidates,
    results) that die by reference counting once it is done; the collector would traverse
    each of them several times meanwhile (about a quarter of the Python time of a CSV
    chunk, measured) and find nothing. Automatic collection resumes afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def meter_events_ingest(
    *, events: Sequence[EventInput], batch: EventBatch, now: datetime | None = None
) -> IngestReport:
    """Validate, deduplicate and store ``events`` as part of ``batch``; see the module doc."""
    with gc_paused():
        return _events_ingest(events, batch, now)


def _events_ingest(
    events: Sequence[EventInput], batch: EventBatch, now: datetime | None
) -> IngestReport:
    now = (now or timezone.now()).astimezone(UTC)
    ctx = _load_context(events, now)
    results: list[EventResult | None] = [None] * len(events)
    rejections: list[EventRejection] = []

    def reject(index: int, code: Code, message: str, param: str, meter: Meter | None) -> None:
        event = events[index]
        identifier = event.identifier or ""
        results[index] = EventResult(
            Outcome.REJECTED, identifier, code.value, message, param, meter.pk if meter else None
        )
        rejections.append(_rejection(batch, event, code, message, param, meter))

    first_by_identifier: dict[str, _Candidate] = {}
    fresh: list[_Candidate] = []
    for index, event in enumerate(events):
        try:
            candidate = _validate(index, event, ctx)
        except _Rejected as rejected:
            meter = ctx.meters.get(_clean(event.event_name))
            reject(index, rejected.code, rejected.message, rejected.param, meter)
            continue
        first = first_by_identifier.get(candidate.identifier)
        if first is None:
            first_by_identifier[candidate.identifier] = candidate
            fresh.append(candidate)
            continue
        differences = first.differences(
            candidate.meter.pk, candidate.customer_id, candidate.timestamp, candidate.value
        )
        if differences:
            reject(
                index,
                Code.DUPLICATE_CONFLICT,
                _conflict_message(candidate.identifier, differences, "earlier in this batch"),
                "identifier",
                candidate.meter,
            )
        else:
            results[index] = EventResult(
                Outcome.DUPLICATE,
                candidate.identifier,
                meter_pk=candidate.meter.pk,
                value=candidate.value,
            )

    with transaction.atomic():
        if batch.dry_run:
            stored = _stored_by_identifier([c.identifier for c in fresh])
            existing = {c.index: stored[c.identifier] for c in fresh if c.identifier in stored}
        elif connection.vendor == "postgresql":
            existing = _write_postgres(fresh, batch, now)
        else:
            existing = _write_plain(fresh, batch, now)
        totals: dict[int, MeterTotal] = defaultdict(MeterTotal)
        for candidate in fresh:
            stored_row = existing.get(candidate.index)
            if stored_row is None:
                results[candidate.index] = EventResult(
                    Outcome.ACCEPTED,
                    candidate.identifier,
                    meter_pk=candidate.meter.pk,
                    value=candidate.value,
                )
                total = totals[candidate.meter.pk]
                total.event_count += 1
                total.value_sum += candidate.value
                continue
            differences = candidate.differences(*stored_row)
            if differences:
                reject(
                    candidate.index,
                    Code.DUPLICATE_CONFLICT,
                    _conflict_message(candidate.identifier, differences, "already"),
                    "identifier",
                    candidate.meter,
                )
            else:
                results[candidate.index] = EventResult(
                    Outcome.DUPLICATE,
                    candidate.identifier,
                    meter_pk=candidate.meter.pk,
                    value=candidate.value,
                )
        EventRejection.objects.bulk_create(rejections, batch_size=1000)
        if not batch.dry_run:
            stored = [c for c in fresh if c.index not in existing]
            usage_changed_announce(
                pairs={(c.meter.pk, c.customer_id) for c in stored},
                days={(c.meter.pk, c.timestamp) for c in stored},
            )

    final = [result for result in results if result is not None]
    assert len(final) == len(events)
    report = IngestReport(batch=batch, results=final, totals_by_meter=dict(totals))
    for result in final:
        if result.outcome == Outcome.ACCEPTED:
            report.accepted += 1
        elif result.outcome == Outcome.DUPLICATE:
            report.duplicates += 1
        else:
            report.rejected += 1
    return report


def _rejection(
    batch: EventBatch, event: EventInput, code: Code, message: str, param: str, meter: Meter | None
) -> EventRejection:
    """The stored record of a refused event, as staff see it and the error file repeats it."""
    customer_ref = _clean(event.payload.get(meter.customer_mapping_key)) if meter else ""
    return EventRejection(
        batch=batch,
        line=event.line,
        column=_storable(param),
        code=code.value,
        message=_storable(message),
        identifier=_storable((event.identifier or "")[:255]),
        event_name=_storable(_clean(event.event_name)[:255]),
        meter=meter,
        customer_ref=_storable(customer_ref[:255]),
        raw=_raw_of(event),
    )


def _conflict_message(identifier: str, differences: list[str], where: str) -> str:
    fields = ", ".join(differences)
    if where == "already":
        return (
            f"An event already exists with identifier {identifier}, with a different {fields}. "
            "It was not changed."
        )
    return f"Identifier {identifier} was used {where} with a different {fields}."


StoredRow = tuple[int, int, datetime, Decimal]  # meter_id, customer_id, timestamp, value


def _stored_by_identifier(identifiers: Sequence[str]) -> dict[str, StoredRow]:
    stored: dict[str, StoredRow] = {}
    for chunk in _chunks(identifiers, _IN_CHUNK):
        for identifier, *row in MeterEvent.objects.filter(identifier__in=chunk).values_list(
            "identifier", "meter_id", "customer_id", "timestamp", "value"
        ):
            stored[identifier] = tuple(row)  # type: ignore[assignment]
    return stored


def _window_of(meter: Meter, timestamp: datetime) -> tuple[datetime, datetime]:
    """The lock/recompute range of an event: its hour, or its pre-aggregation window."""
    hour = timestamp.replace(minute=0, second=0, microsecond=0)
    if meter.event_time_window == Meter.TimeWindow.DAY:
        day = hour.replace(hour=0)
        return day, day + timedelta(days=1)
    return hour, hour + timedelta(hours=1)


# --- Many events in columns (file sources) ----------------------------------------------------
# The common row of a file -- an active meter, a known customer, a plain decimal value, a
# timestamp in range, an identifier seen once -- is checked by a few comparisons here and
# written with COPY. Every other row goes through ``_validate``, the same function every
# source uses, so codes, messages and the order of checks are the same on both paths.
_PLAIN_VALUE = re.compile(r"\d+(?:\.\d+)?")  # at most 15 characters: at most 15 digits
_PLAIN_VALUES = re.compile(r"(?:\d+(?:\.\d+)?\n)+")  # the same, for values joined by "\n"
_JSON_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def meter_events_ingest_columns(
    *,
    columns: EventColumns,
    batch: EventBatch,
    now: datetime | None = None,
    ids_in_turn: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> IngestCounts:
    """``meter_events_ingest`` for events in columns: the same validation, deduplication,
    storage and rollups, with counts instead of one result per event. On PostgreSQL new
    events go straight into the events table with COPY; SQLite, dry runs and meters with an
    event time window take the per-event path.

    ``ids_in_turn`` is entered around drawing the new events' ids: a caller committing
    several chunks of one file at once uses it to keep ids in file order (the tie-break of
    "last" between events with the same timestamp)."""
    with gc_paused():
        now = (now or timezone.now()).astimezone(UTC)
        meters = _meters_named(set(columns.event_names))
        if (
            connection.vendor != "postgresql"
            or batch.dry_run
            or any(meter.event_time_window for meter in meters.values())
        ):
            events = [columns.event_input(index) for index in range(len(columns))]
            report = _events_ingest(events, batch, now)
            return IngestCounts(
                report.accepted, report.duplicates, report.rejected, report.totals_by_meter
            )
        full_set = _full_set_lookup(columns)
        if full_set is not None and full_set[1] and _still_valid(columns, meters, now):
            return IngestCounts(0, len(columns), 0, {})
        return _columns_ingest_postgres(columns, batch, now, meters, full_set, ids_in_turn)


def _full_set_lookup(columns: EventColumns) -> tuple[str, bool] | None:
    """The digest of the chunk's identifiers, and whether a ``StoredIdentifierSet`` has it:
    then every event was stored before, from events that all passed validation."""
    if not columns.content_addressed or not len(columns):
        return None
    digest = _identifier_set_digest(columns.identifiers)
    return digest, StoredIdentifierSet.objects.filter(digest=digest).exists()


def _still_valid(columns: EventColumns, meters: dict[str, Meter], now: datetime) -> bool:
    """Whether events that passed validation before still would: their meters are still
    active and their timestamps still inside the accepted window. (Their customers still
    exist: customers are never deleted; nothing else they were checked by can change.)"""
    if len(meters) != len(set(columns.event_names)) or not all(
        meter.is_active for meter in meters.values()
    ):
        return False
    oldest, newest = _accepted_seconds(now)
    return oldest <= min(columns.timestamps) and max(columns.timestamps) <= newest


@dataclass(slots=True)
class _Accepted:
    """Candidates in columns, in input order."""

    positions: list[int] = field(default_factory=list)
    identifiers: list[str] = field(default_factory=list)
    meter_ids: list[int] = field(default_factory=list)
    customer_ids: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)  # JSON


def _columns_ingest_postgres(
    columns: EventColumns,
    batch: EventBatch,
    now: datetime,
    meters: dict[str, Meter],
    full_set: tuple[str, bool] | None,
    ids_in_turn: Callable[[], AbstractContextManager[object]],
) -> IngestCounts:
    refs: set[str] = set()
    for key in {meter.customer_mapping_key for meter in meters.values()}:
        refs.update(columns.payload.get(key, ()))
    ctx = _context_build(now, meters, refs)
    customers = ctx.customers
    oldest, newest = _accepted_seconds(now)
    names, identifiers = columns.event_names, columns.identifiers
    timestamps, payload = columns.timestamps, columns.payload
    empty = [""] * len(columns)
    # Per meter: its customer and value columns, and whether a missing value counts as 1.
    specs = {
        name: (
            meter,
            payload.get(meter.customer_mapping_key, empty),
            payload.get(meter.value_settings_key, empty),
            meter.aggregation_formula == Meter.Formula.COUNT,
        )
        for name, meter in meters.items()
        if meter.is_active
    }
    meters_by_pk = {meter.pk: meter for meter in meters.values()}
    rejections: list[EventRejection] = []
    counts = IngestCounts(0, 0, 0, {})
    accepted = _Accepted()
    first_at: dict[str, int] = {}  # identifier -> its index in ``accepted``

    def reject(index: int, code: Code, message: str, param: str, meter: Meter | None) -> None:
        event = columns.event_input(index)
        rejections.append(_rejection(batch, event, code, message, param, meter))
        counts.rejected += 1

    payload_keys = [_JSON.encode(key) + ':"' for key in payload]
    value_columns = list(payload.values())

    def plain_payload_json(index: int) -> str | None:
        """The payload's JSON, or None when a value needs escaping (then the row takes the
        per-event path, which also refuses what jsonb cannot hold)."""
        values = [column[index] for column in value_columns]
        if _JSON_NEEDS_ESCAPE.search("".join(values)):
            return None
        parts = [
            key + value + '"' for key, value in zip(payload_keys, values, strict=True) if value
        ]
        return "{" + ",".join(parts) + "}"

    # Usually no value of the chunk needs escaping: then a row's payload JSON is made only if
    # the row is stored ("" until then), not for rows found to be duplicates.
    plain_chunk = not any(_JSON_NEEDS_ESCAPE.search("".join(column)) for column in value_columns)

    def payloads_fill(positions: list[int]) -> None:
        missing = [position for position in positions if not accepted.payloads[position]]
        if missing:
            rows = [accepted.positions[position] for position in missing]
            made = _plain_payloads_json(payload_keys, value_columns, rows)
            for position, text in zip(missing, made, strict=True):
                accepted.payloads[position] = text

    # Usually every row of a chunk is plain (known active meter, customer found, plain
    # value, distinct identifiers): then the rows are accepted column by column.
    if not (
        plain_chunk
        and _accept_plain_chunk(columns, specs, customers, (oldest, newest), accepted, first_at)
    ):
        add_position, add_identifier = accepted.positions.append, accepted.identifiers.append
        add_meter, add_customer = accepted.meter_ids.append, accepted.customer_ids.append
        add_timestamp, add_value = accepted.timestamps.append, accepted.values.append
        add_payload = accepted.payloads.append
        for index, name in enumerate(names):
            spec = specs.get(name)
            identifier = identifiers[index]
            timestamp = timestamps[index]
            if spec is not None and oldest <= timestamp <= newest and len(identifier) <= 100:
                meter, customer_column, value_column, counts_events = spec
                customer_id = customers.get(customer_column[index])
                value = value_column[index]
                if not value and counts_events:
                    value = "1"
                payload_json: str | None = None
                candidate: tuple[int, int, int, str] | None = None
                if (
                    customer_id is not None
                    and len(value) <= MAX_VALUE_DIGITS
                    and _PLAIN_VALUE.fullmatch(value)
                    and "\\" not in identifier
                    and "\x00" not in identifier
                ):
                    payload_json = "" if plain_chunk else plain_payload_json(index)
                    if payload_json is not None:
                        candidate = (meter.pk, customer_id, timestamp, value)
            else:
                candidate = None
            if candidate is None:  # anything unusual: the exact, per-event checks
                try:
                    checked = _validate(index, columns.event_input(index), ctx)
                except _Rejected as rejected:
                    reject(
                        index,
                        rejected.code,
                        rejected.message,
                        rejected.param,
                        ctx.meters.get(_clean(name)),
                    )
                    continue
                identifier = checked.identifier
                candidate = (
                    checked.meter.pk,
                    checked.customer_id,
                    int(checked.timestamp.timestamp()),
                    str(checked.value),
                )
                payload_json = checked.payload_json
            if not identifier:
                identifier = new_identifier()
            earlier = first_at.get(identifier)
            if earlier is not None:
                differences = _differences(accepted, earlier, *candidate)
                if differences:
                    reject(
                        index,
                        Code.DUPLICATE_CONFLICT,
                        _conflict_message(identifier, differences, "earlier in this batch"),
                        "identifier",
                        meters_by_pk[candidate[0]],
                    )
                else:
                    counts.duplicates += 1
                continue
            first_at[identifier] = len(accepted.positions)
            add_position(index)
            add_identifier(identifier)
            add_meter(candidate[0])
            add_customer(candidate[1])
            add_timestamp(candidate[2])
            add_value(candidate[3])
            add_payload(payload_json or "")

    # Its events all stored before (the same file again): every event is a duplicate.
    fingerprint: str | None = None
    seen = False
    if full_set is not None and len(accepted.positions) == len(columns):
        fingerprint, seen = full_set  # every row is a candidate: the set looked up already
    elif columns.content_addressed and accepted.identifiers:
        fingerprint = _identifier_set_digest(accepted.identifiers)
        seen = StoredIdentifierSet.objects.filter(digest=fingerprint).exists()
    with transaction.atomic():
        if seen:
            counts.duplicates += len(accepted.positions)
            accepted = _Accepted()
        stored = _columns_write_postgres(
            accepted, batch, now, first_at, columns.lines, payloads_fill, ids_in_turn
        )
        conflicts = counts.rejected
        for position, row in stored.items():
            differences = _differences(accepted, position, *_stored_as_columns(row))
            if differences:
                identifier = accepted.identifiers[position]
                reject(
                    accepted.positions[position],
                    Code.DUPLICATE_CONFLICT,
                    _conflict_message(identifier, differences, "already"),
                    "identifier",
                    meters_by_pk[accepted.meter_ids[position]],
                )
            else:
                counts.duplicates += 1
        new = [p for p in range(len(accepted.positions)) if p not in stored] if stored else None
        meter_ids, customer_ids = accepted.meter_ids, accepted.customer_ids
        timestamps_of, values_of = accepted.timestamps, accepted.values
        if new is not None:
            meter_ids = [meter_ids[p] for p in new]
            customer_ids = [customer_ids[p] for p in new]
            timestamps_of = [timestamps_of[p] for p in new]
            values_of = [values_of[p] for p in new]
        values_by_meter: dict[int, list[str]] = defaultdict(list)
        for meter_id, value in zip(meter_ids, values_of, strict=True):
            values_by_meter[meter_id].append(value)
        totals = {
            meter_id: MeterTotal(len(values), sum(map(Decimal, values), Decimal(0)))
            for meter_id, values in values_by_meter.items()
        }
        pairs = set(zip(meter_ids, customer_ids, strict=True))
        days = set(zip(meter_ids, [ts // 86400 for ts in timestamps_of], strict=True))
        counts.accepted = len(accepted.positions) - len(stored)
        counts.totals_by_meter = totals
        if fingerprint is not None and not seen and counts.rejected == conflicts:
            StoredIdentifierSet.objects.bulk_create(
                [StoredIdentifierSet(digest=fingerprint, events=len(accepted.positions))],
                ignore_conflicts=True,
            )
        EventRejection.objects.bulk_create(rejections, batch_size=1000)
        usage_changed_announce(
            pairs=pairs,
            days={(meter_pk, date.fromordinal(_EPOCH_ORDINAL + day)) for meter_pk, day in days},
        )
    return counts


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _accept_plain_chunk(
    columns: EventColumns,
    specs: dict[str, tuple[Meter, list[str], list[str], bool]],
    customers: dict[str, int],
    window: tuple[int, int],
    accepted: _Accepted,
    first_at: dict[str, int],
) -> bool:
    """Accept every row of ``columns`` at once if every row passes the checks that the
    per-row loop's fast path makes (then it would accept them all the same way); False,
    with nothing changed, if any row does not."""
    names, identifiers, timestamps = columns.event_names, columns.identifiers, columns.timestamps
    count = len(names)
    used = set(names)
    if not count or not used <= specs.keys():
        return False  # an unknown or inactive meter
    oldest, newest = window
    if min(timestamps) < oldest or max(timestamps) > newest:
        return False
    joined = "".join(identifiers)
    if (
        len(set(identifiers)) != count
        or "\\" in joined
        or "\x00" in joined
        or min(map(len, identifiers)) == 0
        or max(map(len, identifiers)) > 100
    ):
        return False
    meter_ids = [specs[name][0].pk for name in names]
    if len(used) == 1:
        _meter, refs, values, counts_events = specs[next(iter(used))]
        values = [value or "1" for value in values] if counts_events else values
    else:
        refs = [specs[name][1][index] for index, name in enumerate(names)]
        values = []
        for index, name in enumerate(names):
            value = specs[name][2][index]
            values.append("1" if not value and specs[name][3] else value)
    customer_ids = [customers.get(ref) for ref in refs]
    if None in customer_ids or max(map(len, values)) > MAX_VALUE_DIGITS:
        return False
    if not _PLAIN_VALUES.fullmatch("\n".join(values) + "\n"):
        return False
    accepted.positions[:] = range(count)
    accepted.identifiers[:] = identifiers
    accepted.meter_ids[:] = meter_ids
    accepted.customer_ids[:] = customer_ids  # type: ignore[assignment]
    accepted.timestamps[:] = timestamps
    accepted.values[:] = values
    accepted.payloads[:] = [""] * count
    first_at.update(zip(identifiers, range(count), strict=True))
    return True


def _plain_payloads_json(
    keys: list[str], value_columns: list[list[str]], rows: list[int]
) -> list[str]:
    """The payload JSON of ``rows``, whose values need no escaping: each key (given as its
    JSON and ``:"``) with its value, empty values left out. Column by column in Arrow."""
    if not keys:
        return ["{}"] * len(rows)
    taken = pa.array(rows, type=pa.int64())
    parts = []
    for key, column in zip(keys, value_columns, strict=True):
        values = pa.array(column, type=pa.string()).take(taken)
        pair = pc.binary_join_element_wise("," + key, values, '"', "")  # each with its comma
        parts.append(pc.if_else(pc.equal(values, ""), "", pair))
    joined = pc.utf8_slice_codeunits(pc.binary_join_element_wise(*parts, ""), 1)  # 1st comma
    return pc.binary_join_element_wise("{", joined, "}", "").to_pylist()  # type: ignore[no-any-return]


def _identifier_set_digest(identifiers: list[str]) -> str:
    """The identifiers in order (a chunk of the same file comes in the same order)."""
    return hashlib.blake2b("\n".join(identifiers).encode(), digest_size=32).hexdigest()


def _differences(
    accepted: _Accepted,
    position: int,
    meter_id: int,
    customer_id: int,
    timestamp: int,
    value: str | Decimal,
) -> list[str]:
    """What differs between an accepted candidate and another event with its identifier."""
    mine = (
        accepted.meter_ids[position],
        accepted.customer_ids[position],
        accepted.timestamps[position],
        accepted.values[position],
    )
    return _content_differences(mine, (meter_id, customer_id, timestamp, value))


def _stored_as_columns(row: StoredRow) -> tuple[int, int, int, Decimal]:
    meter_id, customer_id, timestamp, value = row
    return meter_id, customer_id, int(timestamp.timestamp()), value


def _columns_write_postgres(
    accepted: _Accepted,
    batch: EventBatch,
    now: datetime,
    first_at: dict[str, int],
    source_lines: list[int],
    payloads_fill: Callable[[list[int]], None],
    ids_in_turn: Callable[[], AbstractContextManager[object]],
) -> dict[int, StoredRow]:
    """Store the new events of ``accepted`` and their rollups; return {position: stored row}
    for the identifiers already taken. ``payloads_fill`` makes the payload JSON of the
    positions it is given."""
    count = len(accepted.positions)
    if not count:
        return {}
    with connection.cursor() as cursor:
        stored = _pg_probe(cursor, accepted.identifiers)
        existing = {first_at[identifier]: row for identifier, row in stored.items()}
        new = [position for position in range(count) if position not in existing]
        if not new:
            return existing
        payloads_fill(new)
        _pg_lock_parents(
            cursor,
            meter_ids={accepted.meter_ids[p] for p in new},
            customer_ids={accepted.customer_ids[p] for p in new},
            batch_id=batch.pk,
        )
        with ids_in_turn():
            ids = _pg_event_ids(cursor, len(new))  # ascending, in input order: receipt order
        event_ids = [0] * count
        for position, event_id in zip(new, ids, strict=True):
            event_ids[position] = event_id
        # In identifier order: the unique index is filled in order, and two batches sharing
        # identifiers wait for each other instead of deadlocking.
        new.sort(key=accepted.identifiers.__getitem__)
        copy_text = _copy_rows(accepted, new, event_ids, batch, now, source_lines)
        savepoint = transaction.savepoint()
        try:
            with cursor.copy(
                "COPY meters_meterevent (id, identifier, meter_id, customer_id, timestamp, "
                "value, payload, batch_id, received_at, line, superseded) FROM STDIN"
            ) as copy:
                copy.write(copy_text)
        except psycopg.errors.UniqueViolation:
            # Another batch stored some of these identifiers meanwhile: the staged path
            # compares each with the stored event.
            transaction.savepoint_rollback(savepoint)
            staged = _columns_write_staged(accepted, new, batch, now, source_lines)
            return existing | staged
        transaction.savepoint_commit(savepoint)
        _pg_rollups_merge(
            cursor,
            "SELECT meter_id, customer_id, date_trunc('hour', timestamp, 'UTC') AS lock_hour, "
            "value, timestamp AS ts, id FROM meters_meterevent "
            "WHERE id BETWEEN %s AND %s AND batch_id = %s",
            [ids[0], ids[-1], batch.pk],
        )
    return existing


def _copy_rows(
    accepted: _Accepted,
    positions: list[int],
    event_ids: list[int],
    batch: EventBatch,
    now: datetime,
    source_lines: list[int],
) -> memoryview:
    """The COPY text (PostgreSQL's text format) of the new events at ``positions``, in that
    order: built column by column in Arrow, so no Python string is made per row."""
    order = pa.array(positions, type=pa.int64())

    def column(values: list[Any], kind: pa.DataType) -> pa.Array:
        return pa.array(values, type=kind).take(order)

    def escaped(texts: pa.Array) -> pa.Array:
        for special, escape in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
            texts = pc.replace_substring(texts, special, escape)
        return texts

    lines = [source_lines[position] for position in accepted.positions]
    text = pc.binary_join_element_wise(
        column(event_ids, pa.int64()).cast(pa.string()),
        escaped(column(accepted.identifiers, pa.string())),
        column(accepted.meter_ids, pa.int64()).cast(pa.string()),
        column(accepted.customer_ids, pa.int64()).cast(pa.string()),
        column(accepted.timestamps, pa.int64()).cast(pa.timestamp("s", tz="UTC")).cast(pa.string()),
        column(accepted.values, pa.string()),
        escaped(column(accepted.payloads, pa.string())),
        str(batch.pk),
        now.isoformat(),
        column(lines, pa.int64()).cast(pa.string()),
        "f\n",  # superseded, and the row's end
        "\t",
    )
    # A string array's values lie end to end in its data buffer: that is the whole text.
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset :][: len(text) + 1]
    return memoryview(text.buffers()[2])[offsets[0] : offsets[-1]]


def _columns_write_staged(
    accepted: _Accepted,
    positions: list[int],
    batch: EventBatch,
    now: datetime,
    source_lines: list[int],
) -> dict[int, StoredRow]:
    meters = Meter.objects.in_bulk({accepted.meter_ids[position] for position in positions})
    candidates = [
        _Candidate(
            index=position,
            identifier=accepted.identifiers[position],
            meter=meters[accepted.meter_ids[position]],
            customer_id=accepted.customer_ids[position],
            timestamp=datetime.fromtimestamp(accepted.timestamps[position], tz=UTC),
            timestamp_given=True,
            value=Decimal(accepted.values[position]),
            payload=json.loads(accepted.payloads[position]),
            line=source_lines[accepted.positions[position]],
        )
        for position in sorted(positions)
    ]
    return _write_postgres(candidates, batch, now)


# --- PostgreSQL: COPY into a staging table, set-based insert and rollups ----------------------
_STAGE_COLUMNS = "id, identifier, meter_id, customer_id, ts, value, payload, line, lock_hour, rend"


def _write_postgres(
    candidates: list[_Candidate], batch: EventBatch, now: datetime
) -> dict[int, StoredRow]:
    """Insert the new events; return {candidate index: stored row} for identifiers taken."""
    if not candidates:
        return {}
    with connection.cursor() as cursor:
        # Identifiers already stored (a re-sent file) cost no id, no staging row and no
        # conflicting insert: one set-based probe of the unique index finds them. A sample
        # probe first, so that a new file does not pay for a full probe that finds nothing.
        # Whatever the probes miss (or a concurrent batch commits meanwhile) is still caught
        # by ON CONFLICT below: the probes only save work.
        existing: dict[int, Any] = {}
        stored = _pg_probe(cursor, [c.identifier for c in candidates])
        if stored:
            existing = {c.index: stored[c.identifier] for c in candidates if c.identifier in stored}
            candidates = [c for c in candidates if c.identifier not in stored]
            if not candidates:
                return existing
        _pg_lock_parents(
            cursor,
            meter_ids={c.meter.pk for c in candidates},
            customer_ids={c.customer_id for c in candidates},
            batch_id=batch.pk,
        )
        ids = _pg_event_ids(cursor, len(candidates))
        by_id: dict[int, _Candidate] = {}
        for candidate, event_id in zip(candidates, ids, strict=True):
            candidate.event_id = event_id
            by_id[event_id] = candidate
        cursor.execute("DROP TABLE IF EXISTS meter_event_stage")
        cursor.execute(
            "CREATE TEMP TABLE meter_event_stage (id bigint, identifier text, meter_id bigint, "
            "customer_id bigint, ts timestamptz, value numeric, payload jsonb, line integer, "
            "lock_hour timestamptz, rend timestamptz, windowed boolean) ON COMMIT DROP"
        )
        with cursor.copy(f"COPY meter_event_stage ({_STAGE_COLUMNS}, windowed) FROM STDIN") as copy:
            for chunk in _chunks(candidates, 5000):
                copy.write("".join(_copy_line(candidate) for candidate in chunk))
        # Sorted by identifier so that two batches sharing identifiers wait, never deadlock.
        cursor.execute(
            "INSERT INTO meters_meterevent (id, identifier, meter_id, customer_id, timestamp, "
            "value, payload, batch_id, line, received_at, superseded) "
            "SELECT id, identifier, meter_id, customer_id, ts, value, payload, %s, line, %s, "
            'false FROM meter_event_stage ORDER BY identifier COLLATE "C" '
            "ON CONFLICT (identifier) DO NOTHING",
            [batch.pk, now],
        )
        inserted = cursor.rowcount
        if inserted < len(candidates):
            # Identifiers already taken: compare with the committed rows, drop from the stage.
            cursor.execute(
                "DELETE FROM meter_event_stage s USING meters_meterevent e "
                "WHERE e.identifier = s.identifier AND e.id <> s.id "
                "RETURNING s.id, e.meter_id, e.customer_id, e.timestamp, e.value"
            )
            existing.update((by_id[row[0]].index, tuple(row[1:])) for row in cursor.fetchall())
        if not inserted:
            return existing
        # Windowed meters re-decide a whole window: lock it first. Raw meters need no separate
        # lock: the sorted upsert below takes its row locks in key order.
        _pg_lock(
            cursor,
            "SELECT DISTINCT meter_id, customer_id, lock_hour FROM meter_event_stage "
            "WHERE windowed",
        )
        # Raw meters: merge the new events into their hours.
        _pg_rollups_merge(
            cursor,
            "SELECT meter_id, customer_id, lock_hour, value, ts, id FROM meter_event_stage "
            "WHERE NOT windowed",
        )
        # Windowed meters: re-decide which event counts in each touched window.
        cursor.execute("DROP TABLE IF EXISTS meter_rollup_ranges")
        cursor.execute(
            "CREATE TEMP TABLE meter_rollup_ranges ON COMMIT DROP AS "
            "SELECT DISTINCT meter_id, customer_id, lock_hour AS rstart, rend "
            "FROM meter_event_stage WHERE windowed"
        )
        _pg_recompute(cursor, windows=True)
        cursor.execute("DROP TABLE meter_event_stage")
    return existing


def _pg_rollups_merge(cursor: Any, source_sql: str, params: Sequence[Any] = ()) -> None:
    """Merge new events of raw meters into their hourly rollups. ``source_sql`` selects them
    as (meter_id, customer_id, lock_hour, value, ts, id). One aggregation pass, no join (the
    planner cannot estimate rows inserted moments ago). Upserted in sorted key order, which
    takes the rollups' row locks in that order."""
    cursor.execute(
        f"WITH source AS ({source_sql}) "
        "INSERT INTO meters_usagerollup AS r (meter_id, customer_id, hour, value_sum, "
        "event_count, last_value, last_timestamp, last_event_id) "
        "SELECT meter_id, customer_id, lock_hour, sum(value), count(*), "
        "(array_agg(value ORDER BY ts DESC, id DESC))[1], max(ts), "
        "(array_agg(id ORDER BY ts DESC, id DESC))[1] "
        "FROM source GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
        "ON CONFLICT (meter_id, customer_id, hour) DO UPDATE SET "
        "value_sum = r.value_sum + EXCLUDED.value_sum, "
        "event_count = r.event_count + EXCLUDED.event_count, "
        "last_value = CASE WHEN r.last_timestamp IS NULL OR (EXCLUDED.last_timestamp, "
        "EXCLUDED.last_event_id) > (r.last_timestamp, r.last_event_id) "
        "THEN EXCLUDED.last_value ELSE r.last_value END, "
        "last_event_id = CASE WHEN r.last_timestamp IS NULL OR (EXCLUDED.last_timestamp, "
        "EXCLUDED.last_event_id) > (r.last_timestamp, r.last_event_id) "
        "THEN EXCLUDED.last_event_id ELSE r.last_event_id END, "
        "last_timestamp = CASE WHEN r.last_timestamp IS NULL OR (EXCLUDED.last_timestamp, "
        "EXCLUDED.last_event_id) > (r.last_timestamp, r.last_event_id) "
        "THEN EXCLUDED.last_timestamp ELSE r.last_timestamp END",
        params,
    )


_PROBE_SAMPLE = 256  # identifiers in the sample probe for already stored events


def _pg_lock_parents(
    cursor: Any, *, meter_ids: Iterable[int], customer_ids: Iterable[int], batch_id: int
) -> None:
    """Lock the meters, customers and batch the new rows refer to, FOR KEY SHARE, as a
    foreign key check would: one statement per table instead of one query per row (events
    and rollups carry no FOREIGN KEY constraints, see HOT_PATH_FK in events/models.py)."""
    for table, ids in (
        ("meters_meter", sorted(meter_ids)),
        ("meters_customer", sorted(customer_ids)),
        ("meters_eventbatch", [batch_id]),
    ):
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE id = ANY(%s) "
            "ORDER BY id FOR KEY SHARE) locked",
            [ids],
        )
        if cursor.fetchone()[0] != len(ids):  # pragma: no cover - nothing deletes them
            raise RuntimeError(f"A row of {table} referred to by new events is gone.")


def _pg_probe(cursor: Any, identifiers: list[str]) -> dict[str, StoredRow]:
    """The stored content of those of ``identifiers`` already taken (a re-sent file). A sample
    probe first, so that new identifiers do not pay for a full probe that finds nothing;
    whatever it misses is still caught by the insert's unique index."""
    step = max(1, len(identifiers) // _PROBE_SAMPLE)
    stored: dict[str, StoredRow] = {}
    for probe in (identifiers[::step], identifiers) if step > 1 else (identifiers,):
        stored = _pg_stored(cursor, probe)
        if not stored:
            break
    return stored


def _pg_stored(cursor: Any, identifiers: list[str]) -> dict[str, StoredRow]:
    """The stored content of those of ``identifiers`` that are already taken."""
    cursor.execute(
        "SELECT identifier, meter_id, customer_id, timestamp, value FROM meters_meterevent "
        "WHERE identifier = ANY(%s::text[])",
        [identifiers],
    )
    return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}


_event_sequence: str | None = None  # the id sequence's name, looked up once


def _pg_event_ids(cursor: Any, count: int) -> list[int]:
    """``count`` new event ids from the sequence, ascending. Usually they are one contiguous
    run (no other session drew ids meanwhile): then only its ends cross the wire."""
    global _event_sequence
    if _event_sequence is None:
        cursor.execute("SELECT pg_get_serial_sequence('meters_meterevent', 'id')")
        _event_sequence = str(cursor.fetchone()[0]).replace("'", "''")
    cursor.execute(
        f"WITH drawn AS (SELECT nextval('{_event_sequence}'::regclass) AS id "
        "FROM generate_series(1, %s)) SELECT min(id), max(id), CASE WHEN "
        "max(id) - min(id) + 1 = count(*) THEN NULL ELSE array_agg(id ORDER BY id) END "
        "FROM drawn",
        [count],
    )
    low, high, scattered = cursor.fetchone()
    return list(range(low, high + 1)) if scattered is None else sorted(scattered)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")


def _copy_text(text: str) -> str:
    return text.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(text) else text


def _copy_line(candidate: _Candidate) -> str:
    """One staging row in COPY's text format: tab-separated, backslash escapes, \\N null."""
    iso = candidate.timestamp.isoformat()  # UTC, whole seconds: 2026-03-10T12:30:05+00:00
    if candidate.meter.event_time_window:
        window_start, window_end = _window_of(candidate.meter, candidate.timestamp)
        lock, end, windowed = window_start.isoformat(), window_end.isoformat(), "t"
    else:
        lock, end, windowed = iso[:13] + ":00:00+00:00", "\\N", "f"
    line = "\\N" if candidate.line is None else candidate.line
    return (
        f"{candidate.event_id}\t{_copy_text(candidate.identifier)}\t"
        f"{candidate.meter.pk}\t{candidate.customer_id}\t{iso}\t{candidate.value}\t"
        f"{_copy_text(candidate.payload_json)}\t{line}\t{lock}\t{end}\t"
        f"{windowed}\n"
    )


def _pg_lock(cursor: Any, keys_sql: str, params: Sequence[Any] = ()) -> None:
    """Create (if missing) and lock the rollup rows that serialise writers, in key order."""
    cursor.execute(
        "INSERT INTO meters_usagerollup (meter_id, customer_id, hour, value_sum, event_count) "
        f"SELECT k.*, 0, 0 FROM ({keys_sql}) k ORDER BY 1, 2, 3 "
        "ON CONFLICT (meter_id, customer_id, hour) DO NOTHING",
        params,
    )
    cursor.execute(
        "SELECT r.id FROM meters_usagerollup r "
        f"JOIN ({keys_sql}) k (meter_id, customer_id, hour) "
        "ON r.meter_id = k.meter_id AND r.customer_id = k.customer_id AND r.hour = k.hour "
        "ORDER BY r.meter_id, r.customer_id, r.hour FOR UPDATE OF r",
        params,
    )


def _pg_recompute(cursor: Any, *, windows: bool) -> None:
    """Recompute rollups (and, for windowed meters, supersession) over the distinct,
    non-overlapping ranges in ``meter_rollup_ranges``. The caller holds the locks."""
    cursor.execute("SELECT 1 FROM meter_rollup_ranges LIMIT 1")
    if cursor.fetchone() is None:
        return
    in_range = (
        "e.meter_id = g.meter_id AND e.customer_id = g.customer_id "
        "AND e.timestamp >= g.rstart AND e.timestamp < g.rend"
    )
    if windows:
        cursor.execute(
            "UPDATE meters_meterevent e SET superseded = (e.id <> w.winner) FROM ("
            "SELECT g.*, (SELECT max(e.id) FROM meters_meterevent e "
            f"WHERE {in_range} AND e.cancelled_at IS NULL) AS winner "
            "FROM meter_rollup_ranges g) w "
            "WHERE e.meter_id = w.meter_id AND e.customer_id = w.customer_id "
            "AND e.timestamp >= w.rstart AND e.timestamp < w.rend AND e.cancelled_at IS NULL "
            "AND e.superseded <> (e.id <> w.winner)"
        )
    cursor.execute(
        "UPDATE meters_usagerollup r SET value_sum = 0, event_count = 0, last_value = NULL, "
        "last_timestamp = NULL, last_event_id = NULL FROM meter_rollup_ranges g "
        "WHERE r.meter_id = g.meter_id AND r.customer_id = g.customer_id "
        "AND r.hour >= g.rstart AND r.hour < g.rend AND r.event_count <> 0"
    )
    counted = (
        "SELECT e.meter_id, e.customer_id, date_trunc('hour', e.timestamp, 'UTC') AS hour, "
        "e.value, e.timestamp, e.id FROM meters_meterevent e JOIN meter_rollup_ranges g "
        f"ON {in_range} WHERE e.cancelled_at IS NULL AND NOT e.superseded"
    )
    cursor.execute(
        f"WITH counted AS ({counted}) "
        "INSERT INTO meters_usagerollup AS r (meter_id, customer_id, hour, value_sum, "
        "event_count, last_value, last_timestamp, last_event_id) "
        "SELECT a.meter_id, a.customer_id, a.hour, a.total, a.events, l.value, l.timestamp, "
        "l.id FROM (SELECT meter_id, customer_id, hour, sum(value) AS total, count(*) AS events "
        "FROM counted GROUP BY 1, 2, 3) a JOIN (SELECT DISTINCT ON (meter_id, customer_id, hour) "
        "meter_id, customer_id, hour, value, timestamp, id FROM counted "
        "ORDER BY meter_id, customer_id, hour, timestamp DESC, id DESC) l "
        "USING (meter_id, customer_id, hour) ORDER BY 1, 2, 3 "
        "ON CONFLICT (meter_id, customer_id, hour) DO UPDATE SET "
        "value_sum = EXCLUDED.value_sum, event_count = EXCLUDED.event_count, "
        "last_value = EXCLUDED.last_value, last_timestamp = EXCLUDED.last_timestamp, "
        "last_event_id = EXCLUDED.last_event_id"
    )
    cursor.execute("DROP TABLE meter_rollup_ranges")


# --- Plain path (SQLite): ORM writes, rollups recomputed in Python ---------------------------
RangeKey = tuple[int, int, datetime, datetime]  # meter_id, customer_id, start, end


def _write_plain(
    candidates: list[_Candidate], batch: EventBatch, now: datetime
) -> dict[int, StoredRow]:
    stored = _stored_by_identifier([c.identifier for c in candidates])
    existing = {c.index: stored[c.identifier] for c in candidates if c.identifier in stored}
    new = [c for c in candidates if c.index not in existing]
    if not new:
        return existing
    # In input order: ids follow receipt order. SQLite serialises writers, so no lock order.
    objects = MeterEvent.objects.bulk_create(
        [
            MeterEvent(
                identifier=c.identifier,
                meter=c.meter,
                customer_id=c.customer_id,
                timestamp=c.timestamp,
                value=c.value,
                payload=c.payload,
                batch=batch,
                line=c.line,
                received_at=now,
            )
            for c in new
        ],
        batch_size=500,
    )
    for candidate, obj in zip(new, objects, strict=True):
        candidate.event_id = obj.pk
    ranges = {(c.meter.pk, c.customer_id, *_window_of(c.meter, c.timestamp)) for c in new}
    windowed = {c.meter.pk for c in new if c.meter.event_time_window}
    _plain_recompute(ranges, windowed)
    return existing


def _plain_recompute(ranges: set[RangeKey], windowed_meters: set[int]) -> None:
    """Recompute supersession (windowed meters) and rollups over ``ranges`` from raw events."""
    by_pair: dict[tuple[int, int], list[tuple[datetime, datetime]]] = defaultdict(list)
    for meter_id, customer_id, start, end in ranges:
        by_pair[(meter_id, customer_id)].append((start, end))
    for (meter_id, customer_id), spans in by_pair.items():
        low = min(start for start, _ in spans)
        high = max(end for _, end in spans)
        rows = list(
            MeterEvent.objects.filter(
                meter_id=meter_id,
                customer_id=customer_id,
                timestamp__gte=low,
                timestamp__lt=high,
                cancelled_at__isnull=True,
            ).values_list("id", "timestamp", "value", "superseded")
        )

        def span_of(timestamp: datetime, spans: list[tuple[datetime, datetime]] = spans) -> int:
            for position, (start, end) in enumerate(spans):
                if start <= timestamp < end:
                    return position
            return -1

        rows = [row for row in rows if span_of(row[1]) >= 0]
        if meter_id in windowed_meters:
            winners: dict[int, int] = {}
            for event_id, timestamp, _, _ in rows:
                position = span_of(timestamp)
                winners[position] = max(winners.get(position, 0), event_id)
            newly_superseded = [
                row[0] for row in rows if row[0] != winners[span_of(row[1])] and not row[3]
            ]
            revived = [row[0] for row in rows if row[0] == winners[span_of(row[1])] and row[3]]
            for chunk in _chunks(newly_superseded, _IN_CHUNK):
                MeterEvent.objects.filter(pk__in=chunk).update(superseded=True)
            for chunk in _chunks(revived, _IN_CHUNK):
                MeterEvent.objects.filter(pk__in=chunk).update(superseded=False)
            winner_ids = set(winners.values())
            rows = [row for row in rows if row[0] in winner_ids]
        else:
            rows = [row for row in rows if not row[3]]
        buckets: dict[datetime, list[tuple[int, datetime, Decimal]]] = defaultdict(list)
        for event_id, timestamp, value, _ in rows:
            buckets[timestamp.replace(minute=0, second=0, microsecond=0)].append(
                (event_id, timestamp, value)
            )
        for start, end in spans:
            UsageRollup.objects.filter(
                meter_id=meter_id, customer_id=customer_id, hour__gte=start, hour__lt=end
            ).exclude(hour__in=list(buckets)).delete()
        current = {
            rollup.hour: rollup
            for rollup in UsageRollup.objects.filter(
                meter_id=meter_id, customer_id=customer_id, hour__in=list(buckets)
            )
        }
        to_create: list[UsageRollup] = []
        to_update: list[UsageRollup] = []
        for hour, events in buckets.items():
            last_id, last_timestamp, last_value = max(events, key=lambda e: (e[1], e[0]))
            rollup = current.get(hour) or UsageRollup(
                meter_id=meter_id, customer_id=customer_id, hour=hour
            )
            rollup.value_sum = sum((value for _, _, value in events), Decimal(0))
            rollup.event_count = len(events)
            rollup.last_value = last_value
            rollup.last_timestamp = last_timestamp
            rollup.last_event_id = last_id
            (to_update if rollup.pk else to_create).append(rollup)
        UsageRollup.objects.bulk_create(to_create, batch_size=500)
        UsageRollup.objects.bulk_update(
            to_update,
            ["value_sum", "event_count", "last_value", "last_timestamp", "last_event_id"],
            batch_size=500,
        )


# --- Cancellation ----------------------------------------------------------------------------
class EventCancelError(ValidationError):
    pass


def meter_event_cancel(
    *, event: MeterEvent, user: AbstractBaseUser, now: datetime | None = None
) -> MeterEvent:
    """Cancel one event; its rollups (and its window, for pre-aggregated meters) stay exact."""
    with transaction.atomic():
        cancelled = _events_cancel(event_ids=[event.pk], batch=None, user=user, now=now)
        if not cancelled:
            raise EventCancelError(
                f"Event {event.identifier} is already cancelled.", code="already_cancelled"
            )
        event.refresh_from_db()
        audit_record(
            target=event,
            action=AuditEntry.Action.CANCEL,
            actor=user,
            changes={"status": ["accepted", "cancelled"]},
        )
    return event


def event_batch_cancel(
    *, batch: EventBatch, user: AbstractBaseUser, now: datetime | None = None
) -> int:
    """Cancel every not yet cancelled event of ``batch``; return how many were cancelled."""
    with transaction.atomic():
        cancelled = _events_cancel(event_ids=None, batch=batch, user=user, now=now)
        audit_record(
            target=batch,
            action=AuditEntry.Action.CANCEL,
            actor=user,
            changes={"events_cancelled": [0, cancelled]},
        )
    return cancelled


def _events_cancel(
    *,
    event_ids: list[int] | None,
    batch: EventBatch | None,
    user: AbstractBaseUser,
    now: datetime | None,
) -> int:
    now = now or timezone.now()
    params: list[Any]
    if event_ids is not None:
        condition, params = "e.id = ANY(%s)", [event_ids]
        queryset = MeterEvent.objects.filter(pk__in=event_ids)
    else:
        assert batch is not None
        condition, params = "e.batch_id = %s", [batch.pk]
        queryset = MeterEvent.objects.filter(batch=batch)
    queryset = queryset.filter(cancelled_at__isnull=True)
    if connection.vendor != "postgresql":
        rows = list(
            queryset.values_list(
                "pk", "meter_id", "customer_id", "timestamp", "meter__event_time_window"
            )
        )
        meters = {meter.pk: meter for meter in Meter.objects.filter(pk__in={r[1] for r in rows})}
        cancelled = 0
        for chunk in _chunks([r[0] for r in rows], _IN_CHUNK):
            cancelled += MeterEvent.objects.filter(pk__in=chunk, cancelled_at__isnull=True).update(
                cancelled_at=now, cancelled_by=user
            )
        ranges = {(r[1], r[2], *_window_of(meters[r[1]], r[3])) for r in rows}
        _plain_recompute(ranges, {pk for pk, m in meters.items() if m.event_time_window})
        usage_changed_announce(days={(r[1], r[3]) for r in rows})
        return cancelled
    keys = (
        "SELECT DISTINCT e.meter_id, e.customer_id, "
        "CASE WHEN m.event_time_window = 'day' THEN date_trunc('day', e.timestamp, 'UTC') "
        "ELSE date_trunc('hour', e.timestamp, 'UTC') END AS hour, "
        "CASE WHEN m.event_time_window = 'day' THEN interval '1 day' ELSE interval '1 hour' "
        "END AS span, m.event_time_window <> '' AS windowed "
        "FROM meters_meterevent e JOIN meters_meter m ON m.id = e.meter_id "
        f"WHERE {condition} AND e.cancelled_at IS NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS meter_cancel_keys")
        cursor.execute(f"CREATE TEMP TABLE meter_cancel_keys ON COMMIT DROP AS {keys}", params)
        # Locks first, then the events: ingestion takes them in the same order.
        _pg_lock(cursor, "SELECT meter_id, customer_id, hour FROM meter_cancel_keys")
        cursor.execute("DROP TABLE IF EXISTS meter_cancelled")
        cursor.execute(
            "CREATE TEMP TABLE meter_cancelled (id bigint, meter_id bigint, customer_id bigint, "
            "ts timestamptz, value numeric, windowed boolean) ON COMMIT DROP"
        )
        cursor.execute(
            "WITH done AS (UPDATE meters_meterevent e SET cancelled_at = %s, "
            f"cancelled_by_id = %s WHERE {condition} AND e.cancelled_at IS NULL "
            "RETURNING e.id, e.meter_id, e.customer_id, e.timestamp, e.value, e.superseded) "
            "INSERT INTO meter_cancelled SELECT d.id, d.meter_id, d.customer_id, d.timestamp, "
            "d.value, m.event_time_window <> '' FROM done d JOIN meters_meter m "
            "ON m.id = d.meter_id",
            [now, user.pk, *params],
        )
        cancelled = cursor.rowcount
        # Raw meters: take the cancelled events out of their hours, and find a new "last"
        # where the last event was cancelled. Exact, and it reads only those hours' tails.
        cursor.execute(
            "UPDATE meters_usagerollup r SET value_sum = r.value_sum - c.total, "
            "event_count = r.event_count - c.events FROM (SELECT meter_id, customer_id, "
            "date_trunc('hour', ts, 'UTC') AS hour, sum(value) AS total, count(*) AS events "
            "FROM meter_cancelled WHERE NOT windowed GROUP BY 1, 2, 3) c "
            "WHERE r.meter_id = c.meter_id AND r.customer_id = c.customer_id AND r.hour = c.hour"
        )
        cursor.execute(
            "UPDATE meters_usagerollup r SET (last_value, last_timestamp, last_event_id) = ("
            "SELECT e.value, e.timestamp, e.id FROM meters_meterevent e "
            "WHERE e.meter_id = r.meter_id AND e.customer_id = r.customer_id "
            "AND e.timestamp >= r.hour AND e.timestamp < r.hour + interval '1 hour' "
            "AND e.cancelled_at IS NULL AND NOT e.superseded "
            "ORDER BY e.timestamp DESC, e.id DESC LIMIT 1) "
            "WHERE r.last_event_id IN (SELECT id FROM meter_cancelled WHERE NOT windowed)"
        )
        # Windowed meters: re-decide the affected windows.
        cursor.execute("DROP TABLE IF EXISTS meter_rollup_ranges")
        cursor.execute(
            "CREATE TEMP TABLE meter_rollup_ranges ON COMMIT DROP AS SELECT meter_id, "
            "customer_id, hour AS rstart, hour + span AS rend FROM meter_cancel_keys "
            "WHERE windowed"
        )
        _pg_recompute(cursor, windows=True)
        cursor.execute("SELECT DISTINCT meter_id, hour FROM meter_cancel_keys")
        usage_changed_announce(days=cursor.fetchall())
        cursor.execute("DROP TABLE meter_cancel_keys")
        cursor.execute("DROP TABLE meter_cancelled")
    return cancelled


# --- Manual entry ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ManualEntryResult:
    result: EventResult
    event: MeterEvent | None  # the stored event (also for a duplicate), None when rejected


def manual_event_record(
    *,
    user: AbstractBaseUser,
    meter: Meter,
    customer_ref: str,
    value: str,
    timestamp: datetime | None = None,
    identifier: str | None = None,
    now: datetime | None = None,
) -> ManualEntryResult:
    """Record one event typed in by a staff member, through the core, as a manual batch."""
    payload = {meter.customer_mapping_key: customer_ref}
    if value.strip():
        payload[meter.value_settings_key] = value
    with transaction.atomic():
        batch = event_batch_create(source=EventBatch.Source.MANUAL, user=user)
        report = meter_events_ingest(
            events=[
                EventInput(
                    event_name=meter.event_name,
                    payload=payload,
                    identifier=identifier or None,
                    timestamp=timestamp,
                )
            ],
            batch=batch,
            now=now,
        )
    result = report.results[0]
    event = None
    if result.outcome != Outcome.REJECTED:
        event = MeterEvent.objects.select_related("meter", "customer").get(
            identifier=result.identifier
        )
    return ManualEntryResult(result=result, event=event)
