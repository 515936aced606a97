"""Stripe's meter event summaries, and the one accumulator of sum, count and last."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from django.core.exceptions import ValidationError
from django.db import connection

from customers.models import Customer
from events.models import MeterEvent, UsageRollup
from meters.models import Meter

# === Usage: summaries and the event explorer (events engineer) ================================
# Summaries read the hourly rollups for whole hours and raw events only for the partial hours
# at the edges of a range. Only "counted" events count: not cancelled and not superseded.
#
# Empty windows: every window of the range is returned, in time order; a window without
# counted events has aggregated_value 0 and event_count 0 ("last" with no events is 0, as
# Stripe bills 0 when no usage is reported).


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


# --- The one aggregation of sum, count and last ----------------------------------------------
# "Last" is the value of the counted event with the greatest (timestamp, id): of two events at
# the same time, the one stored later. ``is_later`` says it in Python and ``last_by_time_sql``
# in SQL; every reader of the hourly, daily and monthly rollups (and of raw events) combines
# through them, so the pages, alerts, billing and Stripe's summaries agree to the digit.

LastKey = tuple[dt.datetime, int]


def is_later(key: LastKey, than: LastKey | None) -> bool:
    """Whether the event at ``key`` (timestamp, id) comes after ``than`` (None: no event)."""
    return than is None or key > than


def last_by_time_sql(
    column: str,
    *,
    timestamp: str = "last_timestamp",
    event_id: str = "last_event_id",
    table: str = "",
) -> str:
    """An aggregate: ``column`` of the row with the greatest (``timestamp``, ``event_id``).

    The defaults read rollup rows (hourly, daily, monthly); raw events pass ``timestamp`` and
    ``id``. ``table`` qualifies all three columns. Rollups without counted events have NULL
    last columns: sorted after every event, so a query that keeps them still gets the right
    value (the readers leave them out with ``event_count > 0`` anyway). Column names are
    fixed literals of the callers, never user text.
    """
    prefix = f"{table}." if table else ""
    return (
        f"(array_agg({prefix}{column} ORDER BY {prefix}{timestamp} DESC NULLS LAST, "
        f"{prefix}{event_id} DESC NULLS LAST))[1]"
    )


def last_columns_sql(
    *, timestamp: str = "last_timestamp", event_id: str = "last_event_id", value: str = "last_value"
) -> str:
    """The three "last" aggregates, in ``UsageAccumulator.add``'s order: timestamp, id, value."""
    order = {"timestamp": timestamp, "event_id": event_id}
    return ", ".join(last_by_time_sql(column, **order) for column in (timestamp, event_id, value))


def formula_value(formula: str, *, total: Decimal, events: int, last: Decimal | None) -> Decimal:
    """A meter's figure from its parts: the sum, the number of events, or the last value
    ("last" with no events is 0, as Stripe bills 0 when no usage is reported)."""
    if formula == Meter.Formula.COUNT:
        return Decimal(events)
    if formula == Meter.Formula.LAST:
        return Decimal(last) if events and last is not None else Decimal(0)
    return Decimal(total)


@dataclass(slots=True)
class UsageAccumulator:
    """Sum, count and last of counted events, combined from rows of any grain (raw events,
    hourly, daily or monthly rollups) in any order."""

    total: Decimal = Decimal(0)
    events: int = 0
    # (timestamp, event id) of the last counted event, and its value.
    last_key: LastKey | None = None
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
            if is_later(key, self.last_key):
                self.last_key, self.last_value = key, last_value

    def merge(self, other: UsageAccumulator) -> None:
        last_timestamp, last_id = other.last_key or (None, None)
        self.add(other.total, other.events, last_timestamp, last_id, other.last_value)

    @property
    def last_event_at(self) -> dt.datetime | None:
        return self.last_key[0] if self.last_key else None

    def value(self, formula: str) -> Decimal:
        return formula_value(formula, total=self.total, events=self.events, last=self.last_value)


HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


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


def window_starts_of(start: dt.datetime, end: dt.datetime, grouping: str) -> list[dt.datetime]:
    if grouping == Grouping.NONE:
        return [start]
    step = HOUR if grouping == Grouping.HOUR else DAY
    starts = []
    moment = start
    while moment < end:
        starts.append(moment)
        moment += step
    return starts


def _floor_hour(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def window_of(moment: dt.datetime, start: dt.datetime, grouping: str) -> dt.datetime:
    if grouping == Grouping.HOUR:
        return _floor_hour(moment)
    if grouping == Grouping.DAY:
        return _floor_hour(moment).replace(hour=0)
    return start


def _whole_hours(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[first, last) whole UTC hours inside [start, end); empty (first >= last) if none."""
    first = _floor_hour(start) if start == _floor_hour(start) else _floor_hour(start) + HOUR
    return first, _floor_hour(end)


def window_sql(grouping: str, column: str) -> str:
    """The window start of a row (its time in ``column``) as SQL; NULL when the whole range is
    one window (the caller puts the range's start). ``column`` and the unit are fixed
    literals: never user text in SQL."""
    if grouping == Grouping.NONE:
        return "NULL::timestamptz"
    unit = "hour" if grouping == Grouping.HOUR else "day"
    return f"date_trunc('{unit}', {column}, 'UTC')"


UsageKey = tuple[int, int, dt.datetime]
"""(meter id, customer id, window start)."""

# Customers per SQLite query: its bound-variable limit.
_SQLITE_CHUNK = 500


@dataclass(frozen=True, slots=True)
class _Read:
    """What one ``usage_by_meter_and_customer`` call reads, whatever the source."""

    meter_ids: list[int]
    customer_ids: list[int]
    grouping: str
    range_start: dt.datetime  # the window of every row when grouping is NONE


def usage_by_meter_and_customer(
    *,
    meter_ids: Sequence[int],
    customer_ids: Sequence[int],
    start: dt.datetime,
    end: dt.datetime,
    grouping: str = Grouping.NONE,
    from_events: bool = False,
) -> dict[UsageKey, UsageAccumulator]:
    """Counted usage of each meter by each customer per window of [start, end): the one read
    behind every per-customer figure (Stripe's summaries and billing, the customer usage
    pages, usage alerts). Only (meter, customer, window) keys with counted events are in the
    result; a ``Grouping.NONE`` window starts at ``start``.

    Whole hours come from the hourly rollups, the partial hours at the edges from raw events
    (only counted ones: not cancelled, not superseded; rollups hold nothing else). With
    ``from_events`` everything is read from raw events (slow; for checks and benchmarks).
    On PostgreSQL one query per source, served by the unique (meter, customer, hour) rollup
    index and the (meter, customer, timestamp) event index; on SQLite, where exact decimals
    are text, the rows are combined in Python by the same ``UsageAccumulator``.
    """
    usage_range_validate(start=start, end=end, grouping=grouping)
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    usage: dict[UsageKey, UsageAccumulator] = defaultdict(UsageAccumulator)
    read = _Read(sorted(set(meter_ids)), sorted(set(customer_ids)), grouping, start)
    if not read.meter_ids or not read.customer_ids:
        return {}
    first_whole, last_whole = _whole_hours(start, end)
    if from_events or first_whole >= last_whole:
        _add_events(usage, read, start=start, end=end)
    else:
        _add_events(usage, read, start=start, end=first_whole)
        _add_rollups(usage, read, start=first_whole, end=last_whole)
        _add_events(usage, read, start=last_whole, end=end)
    return dict(usage)


def _add_rollups(
    usage: dict[UsageKey, UsageAccumulator],
    read: _Read,
    *,
    start: dt.datetime,
    end: dt.datetime,
) -> None:
    """Add the non-empty hourly rollups of the whole hours in [start, end)."""
    if connection.vendor == "postgresql":
        _add_sql(
            usage,
            read,
            table="meters_usagerollup",
            time="hour",
            total="sum(value_sum)",
            events="sum(event_count)",
            last=last_columns_sql(),
            counted="event_count > 0",
            start=start,
            end=end,
        )
        return
    for chunk in _chunks(read.customer_ids):
        rows = UsageRollup.objects.filter(
            meter_id__in=read.meter_ids,
            customer_id__in=chunk,
            hour__gte=start,
            hour__lt=end,
            event_count__gt=0,
        ).values_list(
            "meter_id",
            "customer_id",
            "hour",
            "value_sum",
            "event_count",
            "last_timestamp",
            "last_event_id",
            "last_value",
        )
        for (
            meter_id,
            customer_id,
            hour,
            total,
            events,
            last_ts,
            last_id,
            last_value,
        ) in rows.iterator(chunk_size=2000):
            window = window_of(hour, read.range_start, read.grouping)
            usage[(meter_id, customer_id, window)].add(total, events, last_ts, last_id, last_value)


def _add_events(
    usage: dict[UsageKey, UsageAccumulator],
    read: _Read,
    *,
    start: dt.datetime,
    end: dt.datetime,
) -> None:
    """Add the counted raw events with timestamps in [start, end)."""
    if start >= end:
        return
    if connection.vendor == "postgresql":
        _add_sql(
            usage,
            read,
            table="meters_meterevent",
            time="timestamp",
            total="sum(value)",
            events="count(*)",
            last=last_columns_sql(timestamp="timestamp", event_id="id", value="value"),
            counted="cancelled_at IS NULL AND NOT superseded",
            start=start,
            end=end,
        )
        return
    for chunk in _chunks(read.customer_ids):
        events = MeterEvent.objects.filter(
            meter_id__in=read.meter_ids,
            customer_id__in=chunk,
            timestamp__gte=start,
            timestamp__lt=end,
            cancelled_at__isnull=True,
            superseded=False,
        ).values_list("meter_id", "customer_id", "id", "timestamp", "value")
        for meter_id, customer_id, event_id, timestamp, value in events.iterator(chunk_size=2000):
            window = window_of(timestamp, read.range_start, read.grouping)
            usage[(meter_id, customer_id, window)].add(value, 1, timestamp, event_id, value)


def _add_sql(
    usage: dict[UsageKey, UsageAccumulator],
    read: _Read,
    *,
    table: str,
    time: str,
    total: str,
    events: str,
    last: str,
    counted: str,
    start: dt.datetime,
    end: dt.datetime,
) -> None:
    """PostgreSQL: aggregate ``table``'s counted rows per (meter, customer, window) in the
    database (a year of hours is 8,760 rollup rows per meter and customer) and add them."""
    meters_sql, meters_param = _one_of_sql("meter_id", read.meter_ids)
    customers_sql, customers_param = _one_of_sql("customer_id", read.customer_ids)
    # A constant window (NONE) needs no grouping; the others group by their date_trunc.
    group_by = "1, 2" if read.grouping == Grouping.NONE else "1, 2, 3"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT meter_id, customer_id, {window_sql(read.grouping, time)}, {total}, "
            f"{events}, {last} FROM {table} WHERE {meters_sql} AND {customers_sql} "
            f"AND {time} >= %s AND {time} < %s AND {counted} GROUP BY {group_by}",
            [meters_param, customers_param, start, end],
        )
        for meter_id, customer_id, window, row_total, row_events, *last_columns in cursor:
            usage[(meter_id, customer_id, window or read.range_start)].add(
                row_total, int(row_events), *last_columns
            )


def _one_of_sql(column: str, ids: list[int]) -> tuple[str, int | list[int]]:
    """``column`` in ``ids``: a plain equality for one id (one meter's or one customer's
    reads, the common case, keep the simplest plan), ``= ANY`` otherwise."""
    if len(ids) == 1:
        return f"{column} = %s", ids[0]
    return f"{column} = ANY(%s)", ids


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for first in range(0, len(ids), _SQLITE_CHUNK):
        yield ids[first : first + _SQLITE_CHUNK]


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

    Read by ``usage_by_meter_and_customer``: whole hours from the rollups, partial edge hours
    from raw events; with ``from_events`` all from raw events (slow; for checks and
    benchmarks).
    """
    usage_range_validate(start=start, end=end, grouping=grouping)
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    usage = usage_by_meter_and_customer(
        meter_ids=[meter.pk],
        customer_ids=[customer.pk],
        start=start,
        end=end,
        grouping=grouping,
        from_events=from_events,
    )
    step = {Grouping.HOUR: HOUR, Grouping.DAY: DAY}.get(Grouping(grouping))
    summaries = []
    for window_start in window_starts_of(start, end, grouping):
        bucket = usage.get((meter.pk, customer.pk, window_start), UsageAccumulator())
        summaries.append(
            UsageSummary(
                start=window_start,
                end=end if step is None else window_start + step,
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
