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
    LATE = "late"  # received after the invoice covering its timestamp was finalized


EVENT_STATUS_CHOICES = [
    ("", "All events"),
    (EventStatus.ACCEPTED, "Accepted"),
    (EventStatus.SUPERSEDED, "Superseded"),
    (EventStatus.CANCELLED, "Cancelled"),
    (EventStatus.CONFLICT, "Conflicts"),
    (EventStatus.LATE, "Late, not billed"),
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
    elif filters.status == EventStatus.LATE:
        # Billing owns the rule (the finalized invoices); imported here, as billing builds
        # on meters and not the other way round.
        from billing.selectors import meter_events_late

        events = meter_events_late(events)
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


# === Customer usage pages, meter overview, alerts and the dashboard (usage-pages engineer) =====
# These read the hourly rollups only, so their ranges are whole UTC hours (the pages use whole
# UTC days). They group with the same ``_Accumulator`` as ``meter_event_summaries`` above, so a
# figure here equals Stripe's summary for the same range; tests/meters/test_usage_selectors.py
# checks both against raw events. Cancelled and superseded events are never in a rollup.

from collections import defaultdict  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from django.db import transaction  # noqa: E402

from meters.day_rollups import day_start, month_of  # noqa: E402
from meters.models import (  # noqa: E402
    MeterDailyRollup,
    MeterMonthlyRollup,
    MeterUsageTotal,
    StaleUsageDay,
    UsageAlert,
    UsageAlertTrigger,
)


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """A meter's aggregate over [start, end): one hour or one UTC day."""

    start: dt.datetime
    end: dt.datetime
    value: Decimal
    event_count: int


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter's usage by a customer over a range: the total and its buckets."""

    meter: Meter
    start: dt.datetime
    end: dt.datetime
    grouping: str
    total: Decimal
    event_count: int
    last_event_at: dt.datetime | None
    buckets: list[UsageBucket]


@dataclass(frozen=True, slots=True)
class CustomerTotal:
    customer: Customer
    value: Decimal
    event_count: int


def usage_hour_range_validate(*, start: dt.datetime, end: dt.datetime, grouping: str) -> None:
    """The ranges of this section: hour or day grouping, bounds on whole hours (or days)."""
    if grouping not in (Grouping.HOUR, Grouping.DAY):
        raise ValidationError("Group by hour or by day.", code="invalid_grouping")
    usage_range_validate(start=start, end=end, grouping=grouping)


def _trunc_sql(grouping: str) -> str:
    # A fixed literal per grouping: never user text in SQL.
    return (
        "date_trunc('hour', hour, 'UTC')"
        if grouping == Grouping.HOUR
        else ("date_trunc('day', hour, 'UTC')")
    )


_LAST_ORDER = "ORDER BY last_timestamp DESC, last_event_id DESC"


def _rollup_windows(
    *,
    meter_ids: list[int],
    customer_id: int | None,
    start: dt.datetime,
    end: dt.datetime,
    grouping: str,
) -> dict[tuple[int, dt.datetime], _Accumulator]:
    """{(meter id, window start): accumulator} of the non-empty rollups of the range, for one
    customer (``customer_id``) or every customer (None; then per-customer "last" values are
    kept apart by the caller -- see ``meter_usage_over_time``)."""
    buckets: dict[tuple[int, dt.datetime], _Accumulator] = defaultdict(_Accumulator)
    if not meter_ids:
        return buckets
    if connection.vendor == "postgresql":
        customer_sql = "AND customer_id = %s" if customer_id is not None else ""
        params: list[Any] = [meter_ids]
        if customer_id is not None:
            params.append(customer_id)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT meter_id, {_trunc_sql(grouping)} AS w, sum(value_sum), "
                f"sum(event_count), (array_agg(last_timestamp {_LAST_ORDER}))[1], "
                f"(array_agg(last_event_id {_LAST_ORDER}))[1], "
                f"(array_agg(last_value {_LAST_ORDER}))[1] "
                f"FROM meters_usagerollup WHERE meter_id = ANY(%s) {customer_sql} "
                "AND hour >= %s AND hour < %s AND event_count > 0 GROUP BY 1, 2",
                [*params, start, end],
            )
            for meter_id, window, total, events, last_ts, last_id, last_value in cursor:
                buckets[(meter_id, window)].add(total, int(events), last_ts, last_id, last_value)
        return buckets
    rollups = UsageRollup.objects.filter(
        meter_id__in=meter_ids, hour__gte=start, hour__lt=end, event_count__gt=0
    )
    if customer_id is not None:
        rollups = rollups.filter(customer_id=customer_id)
    for meter_id, hour, total, events, last_ts, last_id, last_value in rollups.values_list(
        "meter_id",
        "hour",
        "value_sum",
        "event_count",
        "last_timestamp",
        "last_event_id",
        "last_value",
    ).iterator(chunk_size=2000):
        buckets[(meter_id, _window_of(hour, start, grouping))].add(
            total, events, last_ts, last_id, last_value
        )
    return buckets


def _bucket_starts(start: dt.datetime, end: dt.datetime, grouping: str) -> list[dt.datetime]:
    return _windows(start, end, grouping)


def _step(grouping: str) -> dt.timedelta:
    return _HOUR if grouping == Grouping.HOUR else _DAY


def customer_usage_by_meter(
    *,
    customer: Customer,
    start: dt.datetime,
    end: dt.datetime,
    grouping: str,
    meter: Meter | None = None,
) -> list[MeterUsage]:
    """The customer's usage per meter over [start, end), grouped by hour or day, for the
    meters with counted events in the range (or just ``meter``, even when empty), by name.

    One query: the unique rollup index (meter, customer, hour) serves
    ``meter_id = ANY(...) AND customer_id = ...`` with one index range per meter.
    """
    usage_hour_range_validate(start=start, end=end, grouping=grouping)
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    meters = [meter] if meter is not None else list(Meter.objects.order_by("display_name", "pk"))
    windows = _rollup_windows(
        meter_ids=[m.pk for m in meters],
        customer_id=customer.pk,
        start=start,
        end=end,
        grouping=grouping,
    )
    used = {meter_id for meter_id, _ in windows}
    step = _step(grouping)
    result = []
    for each in meters:
        if meter is None and each.pk not in used:
            continue
        formula = each.aggregation_formula
        overall = _Accumulator()
        buckets = []
        for window in _bucket_starts(start, end, grouping):
            acc = windows.get((each.pk, window)) or _Accumulator()
            last_timestamp, last_id = acc.last_key or (None, None)
            overall.add(acc.total, acc.events, last_timestamp, last_id, acc.last_value)
            buckets.append(
                UsageBucket(
                    start=window,
                    end=window + step,
                    value=acc.value(formula),
                    event_count=acc.events,
                )
            )
        result.append(
            MeterUsage(
                meter=each,
                start=start,
                end=end,
                grouping=grouping,
                total=overall.value(formula),
                event_count=overall.events,
                last_event_at=overall.last_key[0] if overall.last_key else None,
                buckets=buckets,
            )
        )
    return result


# --- Meter overview: daily rollups where fresh, hourly rollups elsewhere ----------------------
# See meters/day_rollups.py for how the daily tables are kept and why a day without a
# ``StaleUsageDay`` marker can be read from them. ``from_hourly=True`` reads only the hourly
# rollups: the reference the tests compare the fast path with.


@dataclass(frozen=True, slots=True)
class _Segment:
    """The part of a range that falls in one UTC day, and whether that day's daily rows are
    fresh (no stale marker)."""

    start: dt.datetime
    end: dt.datetime
    fresh: bool

    @property
    def whole_day(self) -> bool:
        return self.end - self.start == _DAY


def _stale_days(meter: Meter, first: dt.date, after: dt.date) -> set[dt.date]:
    return set(
        StaleUsageDay.objects.filter(meter=meter, day__gte=first, day__lt=after).values_list(
            "day", flat=True
        )
    )


def _overview_segments(
    meter: Meter, start: dt.datetime, end: dt.datetime, *, stale: set[dt.date] | None
) -> list[_Segment]:
    """[start, end) cut at UTC midnights; ``stale`` None: nothing is fresh (from_hourly)."""
    segments = []
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < end:
        low, high = max(start, day), min(end, day + _DAY)
        segments.append(_Segment(low, high, stale is not None and day.date() not in stale))
        day += _DAY
    return segments


_Ranges = list[tuple[dt.datetime, dt.datetime]]


def _top_customers_plan(
    meter: Meter, start: dt.datetime, end: dt.datetime
) -> tuple[list[dt.date], _Ranges, _Ranges]:
    """(months read from the monthly rollups, day ranges read from the daily rollups, time
    ranges read from the hourly rollups) that together cover [start, end) exactly.

    A month's row serves the range when none of its days is stale and its days not wholly in
    the range have no usage (e.g. the rest of the current month)."""
    first_month = month_of(start.date())[0]
    after_month = month_of((end - _HOUR).date())[1]
    stale = _stale_days(meter, first_month, after_month)
    segments = _overview_segments(meter, start, end, stale=stale)
    whole_from = min((s.start for s in segments if s.whole_day), default=end)
    whole_to = max((s.end for s in segments if s.whole_day), default=end)
    busy_outside = {
        month_of(moment.date())[0]
        for moment in MeterUsageTotal.objects.filter(
            meter=meter,
            grain=MeterUsageTotal.Grain.DAY,
            start__gte=day_start(first_month),
            start__lt=day_start(after_month),
        )
        .exclude(start__gte=whole_from, start__lt=whole_to)
        .values_list("start", flat=True)
    }
    unusable = busy_outside | {month_of(day)[0] for day in stale}
    months: list[dt.date] = []
    days: _Ranges = []
    hours: _Ranges = []
    for segment in segments:
        month = month_of(segment.start.date())[0]
        if month not in unusable:
            if month not in months:
                months.append(month)
        elif segment.fresh and segment.whole_day:
            days.append((segment.start, segment.end))
        else:
            hours.append((segment.start, segment.end))
    return months, _merged(days), _merged(hours)


def _merged(ranges: list[tuple[dt.datetime, dt.datetime]]) -> list[tuple[dt.datetime, dt.datetime]]:
    """Adjacent ranges joined: fewer, longer index scans."""
    merged: list[tuple[dt.datetime, dt.datetime]] = []
    for low, high in ranges:
        if merged and merged[-1][1] == low:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


@contextmanager
def _one_snapshot() -> Iterator[None]:
    """On PostgreSQL, outside a transaction: read the markers, daily rows and hourly rollups
    in one REPEATABLE READ snapshot, so they describe the same moment."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _ranges_sql(column: str, ranges: Sequence[tuple[Any, Any]]) -> tuple[str, list[Any]]:
    """``column`` in one of the [low, high) ``ranges`` (few): an OR of index ranges, which
    the planner estimates well (an unnest join would look big and start parallel workers)."""
    sql = " OR ".join(f"({column} >= %s AND {column} < %s)" for _ in ranges)
    return f"({sql})", [bound for pair in ranges for bound in pair]


def meter_usage_over_time(
    *,
    meter: Meter,
    start: dt.datetime,
    end: dt.datetime,
    grouping: str,
    from_hourly: bool = False,
) -> list[UsageBucket]:
    """The meter's usage across all customers per hour or day of [start, end).

    Sum and count meters add up every customer's usage. For a "last" meter each customer's
    usage in a window is its last value there, and the window shows their sum: what billing
    all customers for that window would count.
    """
    usage_hour_range_validate(start=start, end=end, grouping=grouping)
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    formula = meter.aggregation_formula
    windows: dict[dt.datetime, tuple[Decimal, int]] = {}
    with _one_snapshot():
        stale = None
        if not from_hourly:
            stale = _stale_days(meter, start.date(), (end - _HOUR).date() + _DAY)
        segments = _overview_segments(meter, start, end, stale=stale)
        # Fresh days: the totals table (hour grain for hourly buckets, also for a partial day).
        fresh = _merged([(s.start, s.end) for s in segments if s.fresh])
        hourly = _merged([(s.start, s.end) for s in segments if not s.fresh])
        grain = (
            MeterUsageTotal.Grain.HOUR if grouping == Grouping.HOUR else MeterUsageTotal.Grain.DAY
        )
        if fresh:
            totals = MeterUsageTotal.objects.filter(meter=meter, grain=grain)
            condition = Q()
            for low, high in fresh:
                condition |= Q(start__gte=low, start__lt=high)
            for window, total, events, last_sum in totals.filter(condition).values_list(
                "start", "value_sum", "event_count", "last_sum"
            ):
                windows[window] = (_overview_value(formula, total, events, last_sum), events)
        if hourly:
            windows.update(_over_time_from_hourly(meter, hourly, grouping))
    step = _step(grouping)
    return [
        UsageBucket(
            start=window,
            end=window + step,
            value=windows.get(window, (Decimal(0), 0))[0],
            event_count=windows.get(window, (Decimal(0), 0))[1],
        )
        for window in _bucket_starts(start, end, grouping)
    ]


def _overview_value(formula: str, total: Decimal, events: int, last_sum: Decimal) -> Decimal:
    if formula == Meter.Formula.COUNT:
        return Decimal(events)
    if formula == Meter.Formula.LAST:
        return Decimal(last_sum)
    return Decimal(total)


def _over_time_from_hourly(
    meter: Meter, ranges: list[tuple[dt.datetime, dt.datetime]], grouping: str
) -> dict[dt.datetime, tuple[Decimal, int]]:
    """{window: (value, events)} from the hourly rollups in ``ranges`` (whole days when
    grouping by day)."""
    formula = meter.aggregation_formula
    result: dict[dt.datetime, tuple[Decimal, int]] = {}
    if connection.vendor == "postgresql":
        in_ranges, range_params = _ranges_sql("hour", ranges)
        if formula == Meter.Formula.LAST:
            sql = (
                "SELECT w, sum(v), sum(n) FROM (SELECT customer_id, "
                f"{_trunc_sql(grouping)} AS w, (array_agg(last_value {_LAST_ORDER}))[1] AS v, "
                "sum(event_count) AS n FROM meters_usagerollup WHERE meter_id = %s "
                f"AND {in_ranges} AND event_count > 0 GROUP BY 1, 2) t GROUP BY w"
            )
        else:
            sql = (
                f"SELECT {_trunc_sql(grouping)} AS w, sum(value_sum), sum(event_count) "
                f"FROM meters_usagerollup WHERE meter_id = %s AND {in_ranges} "
                "AND event_count > 0 GROUP BY 1"
            )
        with connection.cursor() as cursor:
            cursor.execute(sql, [meter.pk, *range_params])
            for window, total, events in cursor:
                value = total if formula != Meter.Formula.COUNT else Decimal(events)
                result[window] = (value, int(events))
        return result
    per_customer: dict[tuple[int, dt.datetime], _Accumulator] = defaultdict(_Accumulator)
    for low, high in ranges:
        for customer_id, hour, total, events, last_ts, last_id, last_value in (
            UsageRollup.objects.filter(meter=meter, hour__gte=low, hour__lt=high, event_count__gt=0)
            .values_list(
                "customer_id",
                "hour",
                "value_sum",
                "event_count",
                "last_timestamp",
                "last_event_id",
                "last_value",
            )
            .iterator(chunk_size=2000)
        ):
            per_customer[(customer_id, _window_of(hour, low, grouping))].add(
                total, events, last_ts, last_id, last_value
            )
    totals: dict[dt.datetime, Decimal] = defaultdict(Decimal)
    counts: dict[dt.datetime, int] = defaultdict(int)
    for (_, window), acc in per_customer.items():
        totals[window] += acc.value(formula)
        counts[window] += acc.events
    return {window: (totals[window], counts[window]) for window in totals}


def meter_top_customers(
    *,
    meter: Meter,
    start: dt.datetime,
    end: dt.datetime,
    limit: int = 10,
    from_hourly: bool = False,
) -> list[CustomerTotal]:
    """The customers with the greatest usage of ``meter`` over [start, end) (whole hours),
    greatest first; ties by customer ID. Whole fresh days come from the daily rollups."""
    usage_range_validate(start=start, end=end, grouping=Grouping.HOUR)
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    formula = meter.aggregation_formula
    rows: list[tuple[int, Decimal, int]] = []
    with _one_snapshot():
        months: list[dt.date] = []
        days: _Ranges = []
        hours: _Ranges = [(start, end)]
        if not from_hourly:
            months, days, hours = _top_customers_plan(meter, start, end)
        if connection.vendor == "postgresql":
            value_sql = {
                Meter.Formula.SUM: "sum(value_sum)",
                Meter.Formula.COUNT: "sum(event_count)::numeric",
                Meter.Formula.LAST: f"(array_agg(last_value {_LAST_ORDER}))[1]",
            }[Meter.Formula(formula)]
            columns = (
                "customer_id, value_sum, event_count, last_value, last_timestamp, last_event_id"
            )
            # Only the sources this range needs, so the planner sees the real sizes.
            parts: list[str] = []
            params: list[Any] = []
            if months:
                parts.append(
                    f"SELECT {columns} FROM meters_metermonthlyrollup "
                    "WHERE meter_id = %s AND month = ANY(%s::date[])"
                )
                params += [meter.pk, months]
            if days:
                in_days, day_params = _ranges_sql(
                    "day", [(lo.date(), hi.date()) for lo, hi in days]
                )
                parts.append(
                    f"SELECT {columns} FROM meters_meterdailyrollup WHERE meter_id = %s "
                    f"AND {in_days}"
                )
                params += [meter.pk, *day_params]
            if hours:
                in_hours, hour_params = _ranges_sql("hour", hours)
                parts.append(
                    f"SELECT {columns} FROM meters_usagerollup WHERE meter_id = %s "
                    f"AND {in_hours} AND event_count > 0"
                )
                params += [meter.pk, *hour_params]
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT customer_id, {value_sql} AS v, sum(event_count) FROM ("
                    f"{' UNION ALL '.join(parts)}) u "
                    "GROUP BY customer_id ORDER BY v DESC, customer_id LIMIT %s",
                    [*params, limit],
                )
                rows = [(customer_id, value, int(events)) for customer_id, value, events in cursor]
        else:
            per_customer: dict[int, _Accumulator] = defaultdict(_Accumulator)
            fields = (
                "customer_id",
                "value_sum",
                "event_count",
                "last_timestamp",
                "last_event_id",
                "last_value",
            )
            for (
                customer_id,
                total,
                events,
                last_ts,
                last_id,
                last_value,
            ) in MeterMonthlyRollup.objects.filter(meter=meter, month__in=months).values_list(
                *fields
            ):
                per_customer[customer_id].add(total, events, last_ts, last_id, last_value)
            for low, high in days:
                for (
                    customer_id,
                    total,
                    events,
                    last_ts,
                    last_id,
                    last_value,
                ) in MeterDailyRollup.objects.filter(
                    meter=meter, day__gte=low.date(), day__lt=high.date()
                ).values_list(*fields):
                    per_customer[customer_id].add(total, events, last_ts, last_id, last_value)
            for low, high in hours:
                for (
                    customer_id,
                    total,
                    events,
                    last_ts,
                    last_id,
                    last_value,
                ) in UsageRollup.objects.filter(
                    meter=meter, hour__gte=low, hour__lt=high, event_count__gt=0
                ).values_list(*fields):
                    per_customer[customer_id].add(total, events, last_ts, last_id, last_value)
            rows = sorted(
                ((cid, acc.value(formula), acc.events) for cid, acc in per_customer.items()),
                key=lambda row: (-row[1], row[0]),
            )[:limit]
    customers = Customer.objects.in_bulk([row[0] for row in rows])
    return [
        CustomerTotal(customer=customers[cid], value=Decimal(value), event_count=events)
        for cid, value, events in rows
    ]


def customers_month_usage(
    *, meter: Meter, customer_ids: Sequence[int], now: dt.datetime
) -> dict[int, Decimal]:
    """{customer id: the meter's aggregate for the customer over the calendar month (UTC) of
    ``now``} -- what usage alerts compare with their threshold. Customers without usage: 0."""
    month_start, month_end = calendar_month(now)
    windows_by_customer: dict[int, _Accumulator] = defaultdict(_Accumulator)
    ids = sorted(set(customer_ids))
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT customer_id, sum(value_sum), sum(event_count), "
                f"(array_agg(last_timestamp {_LAST_ORDER}))[1], "
                f"(array_agg(last_event_id {_LAST_ORDER}))[1], "
                f"(array_agg(last_value {_LAST_ORDER}))[1] FROM meters_usagerollup "
                "WHERE meter_id = %s AND customer_id = ANY(%s) AND hour >= %s AND hour < %s "
                "AND event_count > 0 GROUP BY customer_id",
                [meter.pk, ids, month_start, month_end],
            )
            for customer_id, total, events, last_ts, last_id, last_value in cursor:
                windows_by_customer[customer_id].add(
                    total, int(events), last_ts, last_id, last_value
                )
    else:
        for start in range(0, len(ids), 500):
            for (
                customer_id,
                total,
                events,
                last_ts,
                last_id,
                last_value,
            ) in UsageRollup.objects.filter(
                meter=meter,
                customer_id__in=ids[start : start + 500],
                hour__gte=month_start,
                hour__lt=month_end,
                event_count__gt=0,
            ).values_list(
                "customer_id",
                "value_sum",
                "event_count",
                "last_timestamp",
                "last_event_id",
                "last_value",
            ):
                windows_by_customer[customer_id].add(total, events, last_ts, last_id, last_value)
    formula = meter.aggregation_formula
    return {
        customer_id: windows_by_customer[customer_id].value(formula)
        if customer_id in windows_by_customer
        else Decimal(0)
        for customer_id in ids
    }


def calendar_month(moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[first instant, first instant of the next month) of ``moment``'s UTC calendar month."""
    moment = moment.astimezone(dt.UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


@dataclass(frozen=True, slots=True)
class RejectionCount:
    code: str
    count: int


def meter_rejections_by_code(
    *, meter: Meter, since: dt.datetime, until: dt.datetime | None = None
) -> list[RejectionCount]:
    """Rejected events of ``meter`` per error code since ``since`` (validate-only uploads
    excluded: nothing was refused, only checked), most frequent first."""
    rejections = EventRejection.objects.filter(
        meter=meter, created__gte=since, batch__dry_run=False
    )
    if until is not None:
        rejections = rejections.filter(created__lt=until)
    rows = rejections.values("code").annotate(count=models.Count("id")).order_by("-count", "code")
    return [RejectionCount(code=row["code"], count=row["count"]) for row in rows]


def meter_hourly_event_counts(
    *, meter: Meter, start: dt.datetime, end: dt.datetime
) -> list[UsageBucket]:
    """Counted events of ``meter`` per hour of event time over [start, end), all customers,
    from the rollups: the live feed's hourly bars."""
    buckets = meter_usage_over_time(meter=meter, start=start, end=end, grouping=Grouping.HOUR)
    return [
        UsageBucket(
            start=b.start, end=b.end, value=Decimal(b.event_count), event_count=b.event_count
        )
        for b in buckets
    ]


def alert_list(*, status: str = "") -> QuerySet[UsageAlert]:
    alerts = UsageAlert.objects.select_related("meter", "customer").annotate(
        trigger_count=models.Count("triggers")
    )
    if status in UsageAlert.Status.values:
        alerts = alerts.filter(status=status)
    return alerts.order_by("-created", "-id")


def alert_triggers(
    *,
    alert: UsageAlert | None = None,
    customer: Customer | None = None,
    since: dt.datetime | None = None,
) -> QuerySet[UsageAlertTrigger]:
    """Triggered alerts, newest first."""
    triggers = UsageAlertTrigger.objects.select_related("alert__meter", "customer")
    if alert is not None:
        triggers = triggers.filter(alert=alert)
    if customer is not None:
        triggers = triggers.filter(customer=customer)
    if since is not None:
        triggers = triggers.filter(triggered_at__gte=since)
    return triggers.order_by("-triggered_at", "-id")


@dataclass(frozen=True, slots=True)
class DashboardFigures:
    events_today: int
    meters_active: int
    meters_total: int
    customers_with_usage_this_month: int
    alerts_fired_this_week: int


def dashboard_figures(*, now: dt.datetime) -> DashboardFigures:
    """The home page's meters figures. Events "ingested today" are counted by receipt time,
    through today's batches (the batch index), not by event time."""
    now = now.astimezone(dt.UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week_start = today - dt.timedelta(days=today.weekday())
    month_start, _ = calendar_month(now)
    batches_today = EventBatch.objects.filter(created__gte=today, dry_run=False)
    events_today = MeterEvent.objects.filter(batch__in=batches_today, received_at__gte=today)
    meter_ids = list(Meter.objects.values_list("pk", flat=True))
    # One index probe per (customer, meter) on the unique rollup index: no full scan.
    usage_this_month = UsageRollup.objects.filter(
        meter_id__in=meter_ids,
        customer_id=models.OuterRef("pk"),
        hour__gte=month_start,
        event_count__gt=0,
    )
    return DashboardFigures(
        events_today=events_today.count(),
        meters_active=Meter.objects.filter(status=Meter.Status.ACTIVE).count(),
        meters_total=len(meter_ids),
        customers_with_usage_this_month=Customer.objects.filter(
            models.Exists(usage_this_month)
        ).count(),
        alerts_fired_this_week=UsageAlertTrigger.objects.filter(
            triggered_at__gte=week_start
        ).count(),
    )
