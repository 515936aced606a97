"""The meter overview's daily rollups (usage/rollups.py): the overview reads them for
fresh days and the hourly rollups for stale ones, and stays exact -- equal to the hourly-rollup
computation and to raw events -- after ingestion, after the refresh, and after cancellation."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import F

from customers.models import Customer
from events.ingestion import (
    EventInput,
    event_batch_cancel,
    event_batch_create,
    meter_event_cancel,
    meter_events_ingest,
)
from events.models import EventBatch, MeterEvent
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage.models import (
    MeterDailyRollup,
    MeterMonthlyRollup,
    MeterUsageTotal,
    StaleUsageDay,
    UsageRefreshQueued,
)
from usage.rollups import usage_days_refresh, usage_days_refresh_enqueue
from usage.selectors import meter_top_customers, meter_usage_over_time
from usage.summaries import Grouping

pytestmark = pytest.mark.django_db

MONTH = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
VALUES = ["1.5", "2", "0.25", "7", "-1", "3.125", "10", "4", "0.5"]

# (start, end, grouping): a month by day, a week by hour, and an hour-aligned range whose
# first and last days are partial (top customers read those from hourly rollups).
RANGES = [
    (MONTH, MONTH + 31 * DAY, Grouping.DAY),
    (MONTH + 2 * DAY, MONTH + 9 * DAY, Grouping.HOUR),
    (MONTH + 3 * DAY + 5 * HOUR, MONTH + 8 * DAY + 19 * HOUR, Grouping.HOUR),
]


def send(meter: Meter, customer: Customer, items: list[tuple[datetime, str]]) -> EventBatch:
    batch = event_batch_create(source=EventBatch.Source.API)
    report = meter_events_ingest(
        events=[
            EventInput(
                event_name=meter.event_name,
                payload={"stripe_customer_id": customer.external_id, "value": value},
                timestamp=at,
            )
            for at, value in items
        ],
        batch=batch,
        now=NOW,
    )
    assert report.rejected == 0
    return batch


@pytest.fixture
def world() -> tuple[dict[str, Meter], list[Customer], list[EventBatch]]:
    """Sum, count, last and a daily-window meter; three customers with different usage over
    nine days, several events per customer-hour."""
    meters = {
        "sum": MeterFactory.create(aggregation_formula=Meter.Formula.SUM),
        "count": MeterFactory.create(aggregation_formula=Meter.Formula.COUNT),
        "last": MeterFactory.create(aggregation_formula=Meter.Formula.LAST),
        "window": MeterFactory.create(
            aggregation_formula=Meter.Formula.SUM, event_time_window=Meter.TimeWindow.DAY
        ),
    }
    customers = [CustomerFactory.create() for _ in range(3)]
    batches = []
    for index, meter in enumerate(meters.values()):
        for rank, customer in enumerate(customers):
            items = [
                (
                    MONTH + timedelta(days=2 + step % 9, hours=(step * 5) % 24, minutes=step % 50),
                    VALUES[(step + index + rank) % len(VALUES)],
                )
                for step in range(36 - 10 * rank)
            ]
            batches.append(send(meter, customer, items))
    return meters, customers, batches


def counted(meter: Meter, customer_id: int, start: datetime, end: datetime) -> list[MeterEvent]:
    return list(
        MeterEvent.objects.filter(
            meter=meter,
            customer_id=customer_id,
            timestamp__gte=start,
            timestamp__lt=end,
            cancelled_at__isnull=True,
            superseded=False,
        ).order_by("timestamp", "pk")
    )


def aggregate(meter: Meter, events: list[MeterEvent]) -> Decimal:
    if meter.aggregation_formula == Meter.Formula.COUNT:
        return Decimal(len(events))
    if meter.aggregation_formula == Meter.Formula.LAST:
        return events[-1].value if events else Decimal(0)
    return sum((event.value for event in events), Decimal(0))


def from_raw_events(meter: Meter, start: datetime, end: datetime, grouping: str):
    """(buckets as (start, value, count), top customers as (pk, value, count)), the slow
    obvious way: every customer's counted events, per window and over the range."""
    step = HOUR if grouping == Grouping.HOUR else DAY
    customer_ids = set(MeterEvent.objects.filter(meter=meter).values_list("customer_id", flat=True))
    buckets = []
    window = start
    while window < end:
        value, events = Decimal(0), 0
        for customer_id in customer_ids:
            mine = counted(meter, customer_id, window, window + step)
            value += aggregate(meter, mine)
            events += len(mine)
        buckets.append((window, value, events))
        window += step
    top = []
    for customer_id in customer_ids:
        mine = counted(meter, customer_id, start, end)
        if mine:
            top.append((customer_id, aggregate(meter, mine), len(mine)))
    top.sort(key=lambda row: (-row[1], row[0]))
    return buckets, top


def overview(meter: Meter, start: datetime, end: datetime, grouping: str, *, from_hourly: bool):
    buckets = meter_usage_over_time(
        meter=meter, start=start, end=end, grouping=grouping, from_hourly=from_hourly
    )
    top = meter_top_customers(meter=meter, start=start, end=end, from_hourly=from_hourly)
    return (
        [(b.start, b.value, b.event_count) for b in buckets],
        [(t.customer.pk, t.value, t.event_count) for t in top],
    )


def assert_exact(meters: dict[str, Meter]) -> None:
    """The overview equals the hourly-rollup computation and raw events, for every range."""
    for meter in meters.values():
        for start, end, grouping in RANGES:
            fast = overview(meter, start, end, grouping, from_hourly=False)
            assert fast == overview(meter, start, end, grouping, from_hourly=True), meter
            assert fast == from_raw_events(meter, start, end, grouping), meter
            assert any(count for _, _, count in fast[0])


def test_overview_is_exact_after_ingestion_refresh_and_cancellation(world):
    meters, customers, batches = world
    # Just ingested: every touched day is stale, no daily rows yet; read from hourly rollups.
    assert StaleUsageDay.objects.exists()
    assert not MeterDailyRollup.objects.exists()
    assert_exact(meters)

    assert usage_days_refresh() == len(meters) * 9  # nine days of every meter
    assert not StaleUsageDay.objects.exists()
    assert MeterDailyRollup.objects.count() == len(meters) * len(customers) * 9
    assert_exact(meters)

    # Cancel one event and a whole batch: their days go stale, the overview stays exact.
    user = UserFactory.create(username="overview-canceller")
    meter_event_cancel(event=MeterEvent.objects.filter(meter=meters["last"]).last(), user=user)
    meter_event_cancel(event=MeterEvent.objects.filter(meter=meters["window"]).first(), user=user)
    event_batch_cancel(batch=batches[0], user=user)
    stale = set(StaleUsageDay.objects.values_list("meter_id", flat=True))
    assert stale == {meters["sum"].pk, meters["last"].pk, meters["window"].pk}
    assert_exact(meters)

    usage_days_refresh()
    assert not StaleUsageDay.objects.exists()
    assert_exact(meters)


def test_daily_rows_combine_the_days_hourly_rollups(world):
    meters, customers, _ = world
    usage_days_refresh()
    for meter in meters.values():
        for customer in customers:
            for row in MeterDailyRollup.objects.filter(meter=meter, customer=customer):
                start = datetime.combine(row.day, datetime.min.time(), tzinfo=UTC)
                events = counted(meter, customer.pk, start, start + DAY)
                assert (row.value_sum, row.event_count) == (
                    sum((e.value for e in events), Decimal(0)),
                    len(events),
                )
                assert (row.last_value, row.last_event_id) == (events[-1].value, events[-1].pk)
        per_day: dict[datetime, Decimal] = defaultdict(Decimal)
        for row in MeterDailyRollup.objects.filter(meter=meter):
            per_day[datetime.combine(row.day, datetime.min.time(), tzinfo=UTC)] += row.last_value
        day_totals = MeterUsageTotal.objects.filter(meter=meter, grain=MeterUsageTotal.Grain.DAY)
        assert {t.start: t.last_sum for t in day_totals} == dict(per_day)


def test_the_overview_reads_fresh_days_from_the_derived_rows_and_stale_days_from_the_hours(
    world,
):
    """Proof that the fast path is taken, and that stale markers switch it off: derived rows
    altered behind the refresh's back show until their days are marked stale."""
    meters, _, _ = world
    meter = meters["sum"]
    usage_days_refresh()
    exact = {r: overview(meter, *r, from_hourly=True) for r in RANGES[:2]}
    for model in (MeterMonthlyRollup, MeterDailyRollup, MeterUsageTotal):
        model.objects.filter(meter=meter).update(value_sum=F("value_sum") + 1000)

    # The whole month: one monthly row per customer, one daily total per day.
    buckets, top = overview(meter, *RANGES[0], from_hourly=False)
    exact_buckets, exact_top = exact[RANGES[0]]
    assert buckets == [
        (start, value + 1000 if count else value, count) for start, value, count in exact_buckets
    ]
    assert top == [(pk, value + 1000, count) for pk, value, count in exact_top]
    # A week of a month with usage after it: daily rows, one per customer-day.
    _, top = overview(meter, *RANGES[1], from_hourly=False)
    days_used = {
        pk: MeterDailyRollup.objects.filter(
            meter=meter,
            customer_id=pk,
            day__gte=RANGES[1][0].date(),
            day__lt=RANGES[1][1].date(),
        ).count()
        for pk, _, _ in top
    }
    assert top == [
        (pk, value + 1000 * days_used[pk], count) for pk, value, count in exact[RANGES[1]][1]
    ]

    for day in set(MeterDailyRollup.objects.filter(meter=meter).values_list("day", flat=True)):
        StaleUsageDay.objects.create(meter=meter, day=day)
    for r in RANGES[:2]:
        assert overview(meter, *r, from_hourly=False) == exact[r]
    usage_days_refresh()  # recomputes the days and their month: the altered rows are gone
    for r in RANGES[:2]:
        assert overview(meter, *r, from_hourly=False) == exact[r]


def test_refresh_is_idempotent_and_only_touches_stale_days(world):
    meters, _, _ = world
    usage_days_refresh()
    before = sorted(
        MeterDailyRollup.objects.values_list("meter_id", "customer_id", "day", "value_sum")
    )
    assert usage_days_refresh() == 0
    StaleUsageDay.objects.create(meter=meters["count"], day=(MONTH + 3 * DAY).date())
    StaleUsageDay.objects.create(meter=meters["count"], day=(MONTH + 3 * DAY).date())
    assert usage_days_refresh() == 1
    after = sorted(
        MeterDailyRollup.objects.values_list("meter_id", "customer_id", "day", "value_sum")
    )
    assert after == before


def test_a_day_emptied_by_cancellation_loses_its_daily_rows(world):
    meters, customers, _ = world
    meter, day = meters["sum"], MONTH + 4 * DAY
    usage_days_refresh()
    assert MeterDailyRollup.objects.filter(meter=meter, day=day.date()).exists()
    user = UserFactory.create(username="overview-emptier")
    for event in MeterEvent.objects.filter(
        meter=meter, timestamp__gte=day, timestamp__lt=day + DAY, cancelled_at__isnull=True
    ):
        meter_event_cancel(event=event, user=user)
    usage_days_refresh()
    assert not MeterDailyRollup.objects.filter(meter=meter, day=day.date()).exists()
    assert not MeterUsageTotal.objects.filter(
        meter=meter, start__gte=day, start__lt=day + DAY
    ).exists()
    assert_exact({"sum": meter})
    assert len(customers) == 3


def test_a_refresh_recomputes_only_the_days_an_import_touched(world):
    """Proof by a daily row altered behind the refresh's back: an import into another day of
    the same meter and month leaves it as it is; the day the import touched is exact again."""
    meters, customers, _ = world
    meter = meters["sum"]
    usage_days_refresh()
    untouched, touched = (MONTH + 3 * DAY).date(), MONTH + 6 * DAY
    MeterDailyRollup.objects.filter(meter=meter, day=untouched).update(
        value_sum=F("value_sum") + 1000
    )
    altered = sorted(
        MeterDailyRollup.objects.filter(meter=meter, day=untouched).values_list(
            "customer_id", "value_sum"
        )
    )

    send(meter, customers[0], [(touched + 3 * HOUR, "5"), (touched + 20 * HOUR, "0.5")])
    assert usage_days_refresh() == 1  # one (meter, day)

    assert (
        sorted(
            MeterDailyRollup.objects.filter(meter=meter, day=untouched).values_list(
                "customer_id", "value_sum"
            )
        )
        == altered
    )
    for row in MeterDailyRollup.objects.filter(meter=meter, day=touched.date()):
        events = counted(meter, row.customer_id, touched, touched + DAY)
        assert row.value_sum == sum((e.value for e in events), Decimal(0))
        assert (row.event_count, row.last_event_id) == (len(events), events[-1].pk)
    fast = overview(meter, touched, touched + DAY, Grouping.HOUR, from_hourly=False)
    assert fast == overview(meter, touched, touched + DAY, Grouping.HOUR, from_hourly=True)


def test_at_most_one_refresh_per_meter_is_queued_however_many_chunks_commit(world):
    """Each commit asks for a refresh of its meters; while one is queued and not started, no
    second one is queued. Once it starts, the next commit queues the next one."""
    meters, customers, _ = world
    first, second = meters["sum"], meters["count"]

    assert usage_days_refresh_enqueue(meter_ids=[first.pk, second.pk]) == 2
    for _ in range(5):  # more chunks commit before the refresh starts
        assert usage_days_refresh_enqueue(meter_ids=[first.pk, second.pk]) == 0
    assert set(UsageRefreshQueued.objects.values_list("meter_id", flat=True)) == {
        first.pk,
        second.pk,
    }

    usage_days_refresh(meter_id=first.pk)  # the queued refresh of the first meter runs
    assert not StaleUsageDay.objects.filter(meter=first).exists()
    assert StaleUsageDay.objects.filter(meter=second).exists()  # its own refresh is queued
    assert usage_days_refresh_enqueue(meter_ids=[first.pk, second.pk]) == 1
    send(first, customers[0], [(MONTH + 5 * DAY, "2")])
    usage_days_refresh(meter_id=second.pk)
    usage_days_refresh(meter_id=first.pk)
    assert not StaleUsageDay.objects.filter(meter__in=[first, second]).exists()
    assert not UsageRefreshQueued.objects.exists()
    assert_exact({"sum": first, "count": second})


def test_the_sweep_queues_again_a_meter_whose_refresh_message_was_lost(world):
    meters, _, _ = world
    meter = meters["last"]
    assert usage_days_refresh_enqueue(meter_ids=[meter.pk]) == 1
    UsageRefreshQueued.objects.update(queued_at=NOW - timedelta(hours=1))  # its message lost

    usage_days_refresh()  # the sweep: every meter, and the lost flag forgotten
    assert not StaleUsageDay.objects.exists()
    assert usage_days_refresh_enqueue(meter_ids=[meter.pk]) == 1
