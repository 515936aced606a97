"""Reads for the usage pages: customer usage, the meter overview, top customers, the month's
usage that alerts compare with, and the dashboard."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.db.models import Q

from customers.models import Customer
from events.models import EventBatch, EventRejection, MeterEvent, UsageRollup
from meters.models import Meter
from usage.models import MeterDailyRollup, MeterMonthlyRollup, MeterUsageTotal, StaleUsageDay
from usage.rollups import day_start, month_of
from usage.summaries import (
    DAY,
    HOUR,
    Grouping,
    UsageAccumulator,
    formula_value,
    last_by_time_sql,
    usage_by_meter_and_customer,
    usage_range_validate,
    window_of,
    window_sql,
    window_starts_of,
)

# A customer's usage (``customer_usage_by_meter`` for the pages, ``customers_month_usage`` for
# alerts) is read by ``usage.summaries.usage_by_meter_and_customer``, the same read as Stripe's
# summaries and billing, so a figure here equals Stripe's summary for the same range. The
# pages' ranges are whole UTC hours (they use whole UTC days), so they read only rollups.
# Meter-wide reads (overview, top customers) combine rollups of any grain with the same
# ``UsageAccumulator`` and ``last_by_time_sql``. tests/usage/test_selectors.py checks them
# against raw events. Cancelled and superseded events are never in a rollup.


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


def _step(grouping: str) -> dt.timedelta:
    return HOUR if grouping == Grouping.HOUR else DAY


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

    Read by ``usage_by_meter_and_customer`` in one query (whole hours: rollups only); the
    total is its buckets combined by the same accumulator.
    """
    usage_hour_range_validate(start=start, end=end, grouping=grouping)
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    meters = [meter] if meter is not None else list(Meter.objects.order_by("display_name", "pk"))
    windows = usage_by_meter_and_customer(
        meter_ids=[m.pk for m in meters],
        customer_ids=[customer.pk],
        start=start,
        end=end,
        grouping=grouping,
    )
    used = {meter_id for meter_id, _, _ in windows}
    step = _step(grouping)
    result = []
    for each in meters:
        if meter is None and each.pk not in used:
            continue
        formula = each.aggregation_formula
        overall = UsageAccumulator()
        buckets = []
        for window in window_starts_of(start, end, grouping):
            acc = windows.get((each.pk, customer.pk, window)) or UsageAccumulator()
            overall.merge(acc)
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
                last_event_at=overall.last_event_at,
                buckets=buckets,
            )
        )
    return result


# --- Meter overview: daily rollups where fresh, hourly rollups elsewhere ----------------------
# See usage/rollups.py for how the daily tables are kept and why a day without a
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
        return self.end - self.start == DAY


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
        low, high = max(start, day), min(end, day + DAY)
        segments.append(_Segment(low, high, stale is not None and day.date() not in stale))
        day += DAY
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
    after_month = month_of((end - HOUR).date())[1]
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
            stale = _stale_days(meter, start.date(), (end - HOUR).date() + DAY)
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
                value = formula_value(formula, total=total, events=events, last=last_sum)
                windows[window] = (value, events)
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
        for window in window_starts_of(start, end, grouping)
    ]


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
                f"{window_sql(grouping, 'hour')} AS w, {last_by_time_sql('last_value')} AS v, "
                "sum(event_count) AS n FROM meters_usagerollup WHERE meter_id = %s "
                f"AND {in_ranges} AND event_count > 0 GROUP BY 1, 2) t GROUP BY w"
            )
        else:
            sql = (
                f"SELECT {window_sql(grouping, 'hour')} AS w, sum(value_sum), sum(event_count) "
                f"FROM meters_usagerollup WHERE meter_id = %s AND {in_ranges} "
                "AND event_count > 0 GROUP BY 1"
            )
        with connection.cursor() as cursor:
            cursor.execute(sql, [meter.pk, *range_params])
            # ``figure``: the sum, or for a "last" meter the sum of the customers' last values.
            for window, figure, events in cursor:
                value = formula_value(formula, total=figure, events=int(events), last=figure)
                result[window] = (value, int(events))
        return result
    per_customer: dict[tuple[int, dt.datetime], UsageAccumulator] = defaultdict(UsageAccumulator)
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
            per_customer[(customer_id, window_of(hour, low, grouping))].add(
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
                Meter.Formula.LAST: last_by_time_sql("last_value"),
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
            per_customer: dict[int, UsageAccumulator] = defaultdict(UsageAccumulator)
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
    usage = usage_by_meter_and_customer(
        meter_ids=[meter.pk], customer_ids=customer_ids, start=month_start, end=month_end
    )
    formula = meter.aggregation_formula
    return {
        customer_id: usage.get((meter.pk, customer_id, month_start), UsageAccumulator()).value(
            formula
        )
        for customer_id in sorted(set(customer_ids))
    }


def calendar_month(moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[first instant, first instant of the next month) of ``moment``'s UTC calendar month."""
    moment = moment.astimezone(dt.UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


@dataclass(frozen=True, slots=True)
class RejectionCount:
    """Rejected events of one error code: how many, the latest one's time, message and event
    as received (a sample to fix the sender by)."""

    code: str
    count: int
    last_at: dt.datetime | None = None
    message: str = ""
    sample: dict[str, Any] | None = None

    @property
    def sample_pairs(self) -> list[tuple[str, Any]]:
        """The sample's fields for a template (whose ``.items`` would find a field named
        "items" first)."""
        return list((self.sample or {}).items())


@dataclass(frozen=True, slots=True)
class UnknownEventName:
    """Events refused because no meter has their event name: how many, when the latest came,
    who sent it (a staff member or an API key's user, ``api:<name>``) and the event."""

    event_name: str
    count: int
    last_at: dt.datetime
    sender: str
    sample: dict[str, Any]

    @property
    def sample_pairs(self) -> list[tuple[str, Any]]:
        return list(self.sample.items())


def unknown_event_names(*, since: dt.datetime, limit: int = 20) -> list[UnknownEventName]:
    """The event names no meter has that events were sent with since ``since`` (from any
    source; validate-only uploads excluded), most frequent first: no meter's page can show
    them, and an API stream's sender learns of them only here."""
    rows = list(
        EventRejection.objects.filter(
            meter__isnull=True, code="no_meter", created__gte=since, batch__dry_run=False
        )
        .values("event_name")
        .annotate(count=models.Count("id"), latest=models.Max("id"))
        .order_by("-count", "event_name")[:limit]
    )
    latest = EventRejection.objects.select_related("batch__user").in_bulk(
        [row["latest"] for row in rows]
    )
    names = []
    for row in rows:
        sample = latest[row["latest"]]
        user = sample.batch.user
        names.append(
            UnknownEventName(
                event_name=row["event_name"],
                count=row["count"],
                last_at=sample.created,
                sender=user.username if user is not None else "",
                sample=sample.raw,
            )
        )
    return names


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
    rows = list(
        rejections.values("code")
        .annotate(count=models.Count("id"), latest=models.Max("id"))
        .order_by("-count", "code")
    )
    samples = EventRejection.objects.in_bulk([row["latest"] for row in rows])
    return [
        RejectionCount(
            code=row["code"],
            count=row["count"],
            last_at=samples[row["latest"]].created,
            message=samples[row["latest"]].message,
            sample=samples[row["latest"]].raw,
        )
        for row in rows
    ]


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


@dataclass(frozen=True, slots=True)
class DashboardFigures:
    events_today: int
    meters_active: int
    meters_total: int
    customers_with_usage_this_month: int


def dashboard_figures(*, now: dt.datetime) -> DashboardFigures:
    """The home page's meters figures. Events "ingested today" are counted by receipt time,
    through today's batches (the batch index), not by event time."""
    now = now.astimezone(dt.UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
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
    )
