"""Stripe's meter event summaries, and the one accumulator of sum, count and last."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import QuerySet

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


@dataclass(slots=True)
class UsageAccumulator:
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


def _add_rollups(
    buckets: dict[dt.datetime, UsageAccumulator],
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
        buckets[window_of(hour, range_start, grouping)].add(
            total, events, last_ts, last_id, last_value
        )


def _add_events(
    buckets: dict[dt.datetime, UsageAccumulator],
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
        buckets[window_of(timestamp, range_start, grouping)].add(
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
    window_starts = window_starts_of(start, end, grouping)
    buckets: dict[dt.datetime, UsageAccumulator] = {w: UsageAccumulator() for w in window_starts}
    common = {"meter": meter, "customer": customer, "grouping": grouping, "range_start": start}
    first_whole = _floor_hour(start) if start == _floor_hour(start) else _floor_hour(start) + HOUR
    last_whole = _floor_hour(end)
    if from_events or first_whole >= last_whole:
        _add_events(buckets, start=start, end=end, **common)  # type: ignore[arg-type]
    else:
        _add_events(buckets, start=start, end=first_whole, **common)  # type: ignore[arg-type]
        _add_rollups(buckets, start=first_whole, end=last_whole, **common)  # type: ignore[arg-type]
        _add_events(buckets, start=last_whole, end=end, **common)  # type: ignore[arg-type]
    step = {Grouping.HOUR: HOUR, Grouping.DAY: DAY}.get(Grouping(grouping))
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
