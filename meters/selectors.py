"""Reads for meters, customers, the audit trail, and usage.

Two sections: meters/customers/audit first (foundation), usage and events at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import models
from django.db.models import Q, QuerySet

from meters.models import AuditEntry, Customer, Meter

# === Meters, customers and the audit trail ===================================================

T = TypeVar("T")

# Sort keys the meter list accepts: the visible column name, "-" for descending.
METER_SORTS: dict[str, tuple[str, ...]] = {
    "name": ("display_name", "id"),
    "event_name": ("event_name",),
    "formula": ("aggregation_formula", "display_name", "id"),
    "status": ("status", "display_name", "id"),
    "created": ("created", "id"),
}
METER_DEFAULT_SORT = "name"


def meter_sort_key(sort: str) -> str:
    """The sort actually used: ``sort`` if known, else the default."""
    return sort if sort.removeprefix("-") in METER_SORTS else METER_DEFAULT_SORT


def meter_list(*, status: str = "", search: str = "", sort: str = "") -> QuerySet[Meter]:
    """Meters filtered by status ("active", "inactive" or "" for all), searched by display
    or event name (case-insensitive, contains), ordered by a ``METER_SORTS`` key."""
    meters = Meter.objects.all()
    if status in Meter.Status.values:
        meters = meters.filter(status=status)
    search = search.strip()
    if search:
        meters = meters.filter(
            Q(display_name__icontains=search) | Q(event_name__icontains=search) | Q(meter_id=search)
        )
    sort = meter_sort_key(sort)
    fields = METER_SORTS[sort.removeprefix("-")]
    if sort.startswith("-"):
        fields = tuple(f"-{name}" for name in fields)
    return meters.order_by(*fields)


def customer_list(*, search: str = "") -> QuerySet[Customer]:
    """Customers whose ID, name or email contains ``search`` (case-insensitive), by ID.

    On PostgreSQL, trigram indexes (migration 0002) serve these ``icontains`` filters, so
    the search stays quick with 100,000+ customers; pair it with ``page_of`` (no COUNT).
    """
    customers = Customer.objects.all()
    search = search.strip()
    if search:
        customers = customers.filter(
            Q(external_id__icontains=search)
            | Q(name__icontains=search)
            | Q(email__icontains=search)
        )
    return customers.order_by("external_id")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, found without counting the whole result."""

    items: Sequence[T]
    number: int
    per_page: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def start_index(self) -> int:
        return (self.number - 1) * self.per_page + 1 if self.items else 0

    @property
    def end_index(self) -> int:
        return (self.number - 1) * self.per_page + len(self.items)


def page_of(queryset: QuerySet[Any], *, number: int | str | None, per_page: int = 25) -> Page[Any]:
    """Page ``number`` (1-based; anything invalid is page 1) of ``queryset``, fetching one
    extra row to learn whether a next page exists instead of running COUNT(*), which on a
    large filtered set costs as much as the search itself."""
    try:
        page_number = max(1, int(number or 1))
    except (TypeError, ValueError):
        page_number = 1
    offset = (page_number - 1) * per_page
    rows = list(queryset[offset : offset + per_page + 1])
    return Page(
        items=rows[:per_page],
        number=page_number,
        per_page=per_page,
        has_next=len(rows) > per_page,
    )


def audit_entries_for(*, target: models.Model, limit: int = 200) -> QuerySet[AuditEntry]:
    """The audit trail of one object, newest first, with the actors loaded."""
    return AuditEntry.objects.filter(
        target_type=target._meta.label_lower, target_id=str(target.pk)
    ).select_related("actor")[:limit]


# === end of meters, customers and the audit trail ============================================


# === Usage: summaries and the event explorer (events engineer) ================================
# Summaries read the hourly rollups for whole hours and raw events only for the partial hours
# at the edges of a range. Only "counted" events count: not cancelled and not superseded.
#
# Empty windows: every window of the range is returned, in time order; a window without
# counted events has aggregated_value 0 and event_count 0 ("last" with no events is 0, as
# Stripe bills 0 when no usage is reported).

import datetime as dt  # noqa: E402
from decimal import Decimal  # noqa: E402
from enum import StrEnum  # noqa: E402

from django.core.exceptions import ValidationError  # noqa: E402
from django.db import connection  # noqa: E402

from meters.models import EventBatch, EventRejection, MeterEvent, UsageRollup  # noqa: E402


class Grouping(StrEnum):
    NONE = "none"
    HOUR = "hour"
    DAY = "day"


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """Aggregated usage of one meter and customer over [start, end)."""

    start: dt.datetime
    end: dt.datetime
    aggregated_value: Decimal
    event_count: int


@dataclass(slots=True)
class _Accumulator:
    total: Decimal = Decimal(0)
    events: int = 0
    # (timestamp, event id) of the last counted event, and its value.
    last_key: tuple[dt.datetime, int] | None = None
    last_value: Decimal | None = None

    def add(
        self,
        total: Decimal,
        events: int,
        last_timestamp: dt.datetime | None,
        last_id: int | None,
        last_value: Decimal | None,
    ) -> None:
        if not events:
            return
        self.total += total
        self.events += events
        if last_timestamp is not None and last_id is not None:
            key = (last_timestamp, last_id)
            if self.last_key is None or key > self.last_key:
                self.last_key, self.last_value = key, last_value

    def value(self, formula: str) -> Decimal:
        if formula == Meter.Formula.COUNT:
            return Decimal(self.events)
        if formula == Meter.Formula.LAST:
            return self.last_value if self.events and self.last_value is not None else Decimal(0)
        return self.total


_HOUR = dt.timedelta(hours=1)
_DAY = dt.timedelta(days=1)


def usage_range_validate(*, start: dt.datetime, end: dt.datetime, grouping: str) -> None:
    """Raise ``ValidationError`` unless [start, end) is a valid summaries range."""
    if grouping not in {g.value for g in Grouping}:
        raise ValidationError(
            f"Unknown grouping {grouping!r}: use none, hour or day.", code="invalid_grouping"
        )
    for name, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None:
            raise ValidationError(f"The {name} time needs a time zone.", code="naive_time")
        utc = moment.astimezone(dt.UTC)
        if utc.second or utc.microsecond:
            raise ValidationError(
                f"The {name} time must be aligned with a minute boundary; got {utc:%H:%M:%S}.",
                code="misaligned_range",
            )
        if grouping == Grouping.HOUR and utc.minute:
            raise ValidationError(
                f"For hourly grouping, the {name} time must be on an hour boundary "
                f"(00:00, 01:00, ... UTC); got {utc:%H:%M} UTC.",
                code="misaligned_range",
            )
        if grouping == Grouping.DAY and (utc.minute or utc.hour):
            raise ValidationError(
                f"For daily grouping, the {name} time must be at 00:00 UTC; "
                f"got {utc:%Y-%m-%d %H:%M} UTC.",
                code="misaligned_range",
            )
    if end <= start:
        raise ValidationError("The end time must be after the start time.", code="empty_range")


def _windows(start: dt.datetime, end: dt.datetime, grouping: str) -> list[dt.datetime]:
    if grouping == Grouping.NONE:
        return [start]
    step = _HOUR if grouping == Grouping.HOUR else _DAY
    starts = []
    moment = start
    while moment < end:
        starts.append(moment)
        moment += step
    return starts


def _floor_hour(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _window_of(moment: dt.datetime, start: dt.datetime, grouping: str) -> dt.datetime:
    if grouping == Grouping.HOUR:
        return _floor_hour(moment)
    if grouping == Grouping.DAY:
        return _floor_hour(moment).replace(hour=0)
    return start


def _add_rollups(
    buckets: dict[dt.datetime, _Accumulator],
    *,
    meter: Meter,
    customer: Customer,
    start: dt.datetime,
    end: dt.datetime,
    grouping: str,
    range_start: dt.datetime,
) -> None:
    """Add the rollups of the whole hours in [start, end) to their windows."""
    if connection.vendor == "postgresql":
        # Aggregate in the database: a year of hours is 8,760 rows per meter and customer.
        window = (
            "%s::timestamptz"
            if grouping == Grouping.NONE
            else f"date_trunc('{'hour' if grouping == Grouping.HOUR else 'day'}', hour, 'UTC')"
        )
        params: list[Any] = [range_start] if grouping == Grouping.NONE else []
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {window} AS w, sum(value_sum), sum(event_count), "
                "(array_agg(last_timestamp ORDER BY last_timestamp DESC, last_event_id DESC) "
                "FILTER (WHERE event_count > 0))[1], "
                "(array_agg(last_event_id ORDER BY last_timestamp DESC, last_event_id DESC) "
                "FILTER (WHERE event_count > 0))[1], "
                "(array_agg(last_value ORDER BY last_timestamp DESC, last_event_id DESC) "
                "FILTER (WHERE event_count > 0))[1] "
                "FROM meters_usagerollup WHERE meter_id = %s AND customer_id = %s "
                "AND hour >= %s AND hour < %s GROUP BY 1",
                [*params, meter.pk, customer.pk, start, end],
            )
            for window_start, total, events, last_ts, last_id, last_value in cursor.fetchall():
                buckets[window_start].add(
                    total or Decimal(0), int(events or 0), last_ts, last_id, last_value
                )
        return
    # SQLite stores the values as text: aggregate them in Python, exactly.
    rows = UsageRollup.objects.filter(
        meter=meter, customer=customer, hour__gte=start, hour__lt=end
    ).values_list(
        "hour", "value_sum", "event_count", "last_timestamp", "last_event_id", "last_value"
    )
    for hour, total, events, last_ts, last_id, last_value in rows.iterator(chunk_size=2000):
        buckets[_window_of(hour, range_start, grouping)].add(
            total, events, last_ts, last_id, last_value
        )


def _add_events(
    buckets: dict[dt.datetime, _Accumulator],
    *,
    meter: Meter,
    customer: Customer,
    start: dt.datetime,
    end: dt.datetime,
    grouping: str,
    range_start: dt.datetime,
) -> None:
    """Add the counted raw events with timestamps in [start, end) to their windows."""
    if start >= end:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            window = (
                "%s::timestamptz"
                if grouping == Grouping.NONE
                else f"date_trunc('{'hour' if grouping == Grouping.HOUR else 'day'}', "
                "timestamp, 'UTC')"
            )
            params: list[Any] = [range_start] if grouping == Grouping.NONE else []
            cursor.execute(
                f"SELECT {window} AS w, sum(value), count(*), "
                "(array_agg(timestamp ORDER BY timestamp DESC, id DESC))[1], "
                "(array_agg(id ORDER BY timestamp DESC, id DESC))[1], "
                "(array_agg(value ORDER BY timestamp DESC, id DESC))[1] "
                "FROM meters_meterevent WHERE meter_id = %s AND customer_id = %s "
                "AND timestamp >= %s AND timestamp < %s AND cancelled_at IS NULL "
                "AND NOT superseded GROUP BY 1",
                [*params, meter.pk, customer.pk, start, end],
            )
            for window_start, total, count, last_ts, last_id, last_value in cursor.fetchall():
                buckets[window_start].add(total, count, last_ts, last_id, last_value)
        return
    events = counted_events(meter=meter, customer=customer, start=start, end=end)
    for event_id, timestamp, value in events.values_list("id", "timestamp", "value").iterator(
        chunk_size=2000
    ):
        buckets[_window_of(timestamp, range_start, grouping)].add(
            value, 1, timestamp, event_id, value
        )


def counted_events(
    *, meter: Meter, customer: Customer, start: dt.datetime, end: dt.datetime
) -> QuerySet[MeterEvent]:
    """The events that count towards usage, with timestamps in [start, end)."""
    return MeterEvent.objects.filter(
        meter=meter,
        customer=customer,
        timestamp__gte=start,
        timestamp__lt=end,
        cancelled_at__isnull=True,
        superseded=False,
    )


def meter_event_summaries(
    *,
    meter: Meter,
    customer: Customer,
    start: dt.datetime,
    end: dt.datetime,
    grouping: str = Grouping.NONE,
    from_events: bool = False,
) -> list[UsageSummary]:
    """Stripe's meter event summaries: the meter's aggregate for ``customer`` per window of
    [start, end) (start inclusive, end exclusive, minute-aligned; hour and day grouping need
    hour- and UTC-day-aligned bounds). One summary per window, oldest first, empty windows
    included with 0.

    Whole hours come from the rollups, partial edge hours from raw events. With
    ``from_events`` everything is read from raw events (slow; for checks and benchmarks).
    """
    usage_range_validate(start=start, end=end, grouping=grouping)
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    window_starts = _windows(start, end, grouping)
    buckets: dict[dt.datetime, _Accumulator] = {w: _Accumulator() for w in window_starts}
    common = {"meter": meter, "customer": customer, "grouping": grouping, "range_start": start}
    first_whole = _floor_hour(start) if start == _floor_hour(start) else _floor_hour(start) + _HOUR
    last_whole = _floor_hour(end)
    if from_events or first_whole >= last_whole:
        _add_events(buckets, start=start, end=end, **common)  # type: ignore[arg-type]
    else:
        _add_events(buckets, start=start, end=first_whole, **common)  # type: ignore[arg-type]
        _add_rollups(buckets, start=first_whole, end=last_whole, **common)  # type: ignore[arg-type]
        _add_events(buckets, start=last_whole, end=end, **common)  # type: ignore[arg-type]
    step = {Grouping.HOUR: _HOUR, Grouping.DAY: _DAY}.get(Grouping(grouping))
    summaries = []
    for window_start in window_starts:
        window_end = end if step is None else window_start + step
        bucket = buckets[window_start]
        summaries.append(
            UsageSummary(
                start=window_start,
                end=window_end,
                aggregated_value=bucket.value(meter.aggregation_formula),
                event_count=bucket.events,
            )
        )
    return summaries


def meter_usage_aggregate(
    *, meter: Meter, customer: Customer, start: dt.datetime, end: dt.datetime
) -> UsageSummary:
    """The meter's aggregate for ``customer`` over [start, end): one summary."""
    (summary,) = meter_event_summaries(
        meter=meter, customer=customer, start=start, end=end, grouping=Grouping.NONE
    )
    return summary


# --- Event explorer ----------------------------------------------------------------------------
class EventStatus(StrEnum):
    ACCEPTED = "accepted"  # counted: neither cancelled nor superseded
    SUPERSEDED = "superseded"  # replaced by a newer event in its pre-aggregation window
    CANCELLED = "cancelled"
    CONFLICT = "conflict"  # a rejected duplicate_meter_event_conflict (an EventRejection)


EVENT_STATUS_CHOICES = [
    ("", "All events"),
    (EventStatus.ACCEPTED, "Accepted"),
    (EventStatus.SUPERSEDED, "Superseded"),
    (EventStatus.CANCELLED, "Cancelled"),
    (EventStatus.CONFLICT, "Conflicts"),
]


@dataclass(frozen=True, slots=True)
class EventFilters:
    meter: Meter | None = None
    customer: Customer | None = None
    source: str = ""
    start: dt.datetime | None = None  # event timestamp, inclusive
    end: dt.datetime | None = None  # event timestamp, exclusive
    identifier: str = ""
    status: str = ""


@dataclass(frozen=True, slots=True)
class KeysetPage(Generic[T]):
    """Newest first. ``next_before`` is the id to pass as ``before`` for older rows."""

    items: list[T]
    next_before: int | None

    @property
    def has_next(self) -> bool:
        return self.next_before is not None


def event_status(event: MeterEvent) -> EventStatus:
    if event.cancelled_at is not None:
        return EventStatus.CANCELLED
    if event.superseded:
        return EventStatus.SUPERSEDED
    return EventStatus.ACCEPTED


def event_source(batch: EventBatch) -> tuple[str, str]:
    """(label, url) of where a batch came from: its upload's page, or who entered it."""
    upload = getattr(batch, "upload", None)
    if upload is not None:
        return f"CSV upload #{upload.pk}", upload.get_absolute_url()
    if batch.source == EventBatch.Source.MANUAL:
        who = batch.user.get_username() if batch.user else "unknown user"
        return f"Manual entry by {who}", ""
    return f"{batch.get_source_display()} (batch {batch.pk})", ""


def _keyset(queryset: QuerySet[Any], *, before: int | None, per_page: int) -> KeysetPage[Any]:
    if before is not None:
        queryset = queryset.filter(pk__lt=before)
    rows = list(queryset.order_by("-pk")[: per_page + 1])
    next_before = rows[per_page - 1].pk if len(rows) > per_page else None
    return KeysetPage(items=rows[:per_page], next_before=next_before)


def event_explorer(
    *, filters: EventFilters, before: int | None = None, per_page: int = 50
) -> KeysetPage[Any]:
    """Events (or, for status "conflict", conflict rejections) matching ``filters``, newest
    first, paginated by id so that a deep page costs what the first one does."""
    if filters.status == EventStatus.CONFLICT:
        rejections = EventRejection.objects.filter(code="duplicate_meter_event_conflict")
        if filters.meter is not None:
            rejections = rejections.filter(meter=filters.meter)
        if filters.customer is not None:
            rejections = rejections.filter(customer_ref=filters.customer.external_id)
        if filters.source:
            rejections = rejections.filter(batch__source=filters.source)
        if filters.start is not None:
            rejections = rejections.filter(created__gte=filters.start)
        if filters.end is not None:
            rejections = rejections.filter(created__lt=filters.end)
        if filters.identifier:
            rejections = rejections.filter(identifier=filters.identifier)
        return _keyset(
            rejections.select_related("meter", "batch__user", "batch__upload"),
            before=before,
            per_page=per_page,
        )
    events = MeterEvent.objects.select_related(
        "meter", "customer", "batch__user", "batch__upload", "cancelled_by"
    )
    if filters.meter is not None:
        events = events.filter(meter=filters.meter)
    if filters.customer is not None:
        events = events.filter(customer=filters.customer)
    if filters.source:
        events = events.filter(batch__source=filters.source)
    if filters.start is not None:
        events = events.filter(timestamp__gte=filters.start)
    if filters.end is not None:
        events = events.filter(timestamp__lt=filters.end)
    if filters.identifier:
        events = events.filter(identifier=filters.identifier)
    if filters.status == EventStatus.ACCEPTED:
        events = events.filter(cancelled_at__isnull=True, superseded=False)
    elif filters.status == EventStatus.SUPERSEDED:
        events = events.filter(cancelled_at__isnull=True, superseded=True)
    elif filters.status == EventStatus.CANCELLED:
        events = events.filter(cancelled_at__isnull=False)
    return _keyset(events, before=before, per_page=per_page)


def events_recent(
    *, meter: Meter | None = None, customer: Customer | None = None, limit: int = 10
) -> list[MeterEvent]:
    """The most recently received events of a meter and/or customer."""
    events = MeterEvent.objects.select_related("meter", "customer", "batch__user")
    if meter is not None:
        events = events.filter(meter=meter)
    if customer is not None:
        events = events.filter(customer=customer)
    return list(events.order_by("-pk")[:limit])


def customer_options(*, search: str, limit: int = 20) -> list[Customer]:
    """Customers for a type-ahead: external ID prefix first, then name or email matches."""
    search = search.strip()
    if not search:
        return []
    by_id = list(
        Customer.objects.filter(external_id__startswith=search).order_by("external_id")[:limit]
    )
    if len(by_id) < limit:
        seen = {c.pk for c in by_id}
        more = Customer.objects.filter(Q(name__icontains=search) | Q(email__icontains=search))
        by_id += [c for c in more.order_by("external_id")[: limit * 2] if c.pk not in seen]
    return by_id[:limit]
