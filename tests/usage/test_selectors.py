"""The usage pages' selectors against Stripe's summaries and brute force over raw events: the
period total, its days, their hours and the events in each hour add up exactly, with cancelled
and superseded events left out."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from events.ingestion import EventInput, event_batch_create, meter_event_cancel, meter_events_ingest
from events.models import EventBatch, MeterEvent
from events.selectors import EventFilters, EventStatus, event_explorer
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage.selectors import (
    customer_usage_by_meter,
    customers_month_usage,
    meter_rejections_by_code,
    meter_top_customers,
    meter_usage_over_time,
)
from usage.summaries import Grouping, meter_usage_aggregate

pytestmark = pytest.mark.django_db

MONTH = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def send(meter, customer, items, now=NOW):
    batch = event_batch_create(source=EventBatch.Source.API)
    report = meter_events_ingest(
        events=[
            EventInput(
                event_name=meter.event_name,
                payload={"stripe_customer_id": customer.external_id, "value": str(value)},
                timestamp=at,
            )
            for at, value in items
        ],
        batch=batch,
        now=now,
    )
    assert report.rejected == 0
    return report


@pytest.fixture
def world():
    """Three meters (sum, count, last) and a daily-window meter, usage for two customers over
    several days, some events cancelled and some superseded."""
    customer, other = CustomerFactory(), CustomerFactory()
    meters = {
        "sum": MeterFactory(aggregation_formula=Meter.Formula.SUM),
        "count": MeterFactory(aggregation_formula=Meter.Formula.COUNT),
        "last": MeterFactory(aggregation_formula=Meter.Formula.LAST),
        "window": MeterFactory(
            aggregation_formula=Meter.Formula.SUM, event_time_window=Meter.TimeWindow.DAY
        ),
    }
    values = ["1.5", "2", "0.25", "7", "-1", "3.125", "10", "4"]
    for index, meter in enumerate(meters.values()):
        items = []
        for step in range(40):
            at = MONTH + timedelta(days=2 + step % 9, hours=(step * 7) % 24, minutes=step)
            items.append((at, values[(step + index) % len(values)]))
        send(meter, customer, items)
        send(meter, other, items[:10])
    user = UserFactory(username="canceller")
    cancelled = MeterEvent.objects.filter(customer=customer).order_by("pk")[::9]
    for event in cancelled:
        if event.cancelled_at is None:
            meter_event_cancel(event=event, user=user)
    return customer, meters


def brute_force(meter, customer, start, end):
    """(value, count) from counted raw events, the slow obvious way."""
    events = list(
        MeterEvent.objects.filter(
            meter=meter,
            customer=customer,
            timestamp__gte=start,
            timestamp__lt=end,
            cancelled_at__isnull=True,
            superseded=False,
        ).order_by("timestamp", "pk")
    )
    if meter.aggregation_formula == Meter.Formula.COUNT:
        return Decimal(len(events)), len(events)
    if meter.aggregation_formula == Meter.Formula.LAST:
        return (events[-1].value if events else Decimal(0)), len(events)
    return sum((e.value for e in events), Decimal(0)), len(events)


def combine(meter, buckets):
    if meter.aggregation_formula == Meter.Formula.LAST:
        filled = [b for b in buckets if b.event_count]
        return filled[-1].value if filled else Decimal(0)
    return sum((b.value for b in buckets), Decimal(0))


def test_every_level_adds_up_to_the_level_above(world):
    customer, meters = world
    month_end = MONTH + timedelta(days=31)
    usages = customer_usage_by_meter(
        customer=customer, start=MONTH, end=month_end, grouping=Grouping.DAY
    )
    assert {u.meter.pk for u in usages} == {m.pk for m in meters.values()}
    checked_hours = 0
    for usage in usages:
        meter = usage.meter
        # Level 0: the period total is Stripe's summary and the raw events' aggregate.
        stripe = meter_usage_aggregate(meter=meter, customer=customer, start=MONTH, end=month_end)
        assert (usage.total, usage.event_count) == (stripe.aggregated_value, stripe.event_count)
        assert (usage.total, usage.event_count) == brute_force(meter, customer, MONTH, month_end)
        assert usage.event_count > 0
        # Level 1: the days make the total.
        assert len(usage.buckets) == 31
        assert combine(meter, usage.buckets) == usage.total
        assert sum(b.event_count for b in usage.buckets) == usage.event_count
        for day in usage.buckets:
            assert (day.value, day.event_count) == brute_force(meter, customer, day.start, day.end)
            if not day.event_count:
                continue
            # Level 2: the hours make the day.
            (hours,) = customer_usage_by_meter(
                customer=customer,
                start=day.start,
                end=day.end,
                grouping=Grouping.HOUR,
                meter=meter,
            )
            assert (hours.total, hours.event_count) == (day.value, day.event_count)
            assert combine(meter, hours.buckets) == day.value
            for hour in hours.buckets:
                if not hour.event_count:
                    continue
                # Level 3: the accepted events in the explorer make the hour.
                page = event_explorer(
                    filters=EventFilters(
                        meter=meter,
                        customer=customer,
                        start=hour.start,
                        end=hour.end,
                        status=EventStatus.ACCEPTED,
                    ),
                    per_page=1000,
                )
                events = sorted(page.items, key=lambda e: (e.timestamp, e.pk))
                assert len(events) == hour.event_count
                if meter.aggregation_formula == Meter.Formula.SUM:
                    assert sum((e.value for e in events), Decimal(0)) == hour.value
                elif meter.aggregation_formula == Meter.Formula.LAST:
                    assert events[-1].value == hour.value
                else:
                    assert Decimal(len(events)) == hour.value
                checked_hours += 1
    assert checked_hours > 50


def test_cancelled_and_superseded_events_are_left_out(world):
    customer, meters = world
    assert MeterEvent.objects.filter(customer=customer, cancelled_at__isnull=False).exists()
    assert MeterEvent.objects.filter(customer=customer, superseded=True).exists()
    (usage,) = customer_usage_by_meter(
        customer=customer,
        start=MONTH,
        end=MONTH + 31 * DAY,
        grouping=Grouping.DAY,
        meter=meters["sum"],
    )
    stored = MeterEvent.objects.filter(customer=customer, meter=meters["sum"]).count()
    assert usage.event_count < stored


def test_last_event_time_is_the_latest_counted_event(world):
    customer, meters = world
    (usage,) = customer_usage_by_meter(
        customer=customer,
        start=MONTH,
        end=MONTH + 31 * DAY,
        grouping=Grouping.DAY,
        meter=meters["sum"],
    )
    latest = (
        MeterEvent.objects.filter(
            customer=customer, meter=meters["sum"], cancelled_at__isnull=True, superseded=False
        )
        .order_by("-timestamp")
        .first()
    )
    assert usage.last_event_at == latest.timestamp


def test_a_meter_without_usage_is_listed_only_when_asked_for(world):
    customer, _ = world
    idle = MeterFactory()
    usages = customer_usage_by_meter(
        customer=customer, start=MONTH, end=MONTH + DAY, grouping=Grouping.HOUR
    )
    assert idle.pk not in {u.meter.pk for u in usages}
    (only,) = customer_usage_by_meter(
        customer=customer, start=MONTH, end=MONTH + DAY, grouping=Grouping.HOUR, meter=idle
    )
    assert (only.total, only.event_count, len(only.buckets)) == (Decimal(0), 0, 24)


def test_meter_over_time_and_top_customers_match_per_customer_figures(world):
    customer, meters = world
    start, end = MONTH, MONTH + 31 * DAY
    for meter in meters.values():
        buckets = meter_usage_over_time(meter=meter, start=start, end=end, grouping=Grouping.DAY)
        per_day: dict[datetime, Decimal] = defaultdict(Decimal)
        totals = {}
        for each in (
            MeterEvent.objects.filter(meter=meter).values_list("customer_id", flat=True).distinct()
        ):
            who = type(customer).objects.get(pk=each)
            (usage,) = customer_usage_by_meter(
                customer=who, start=start, end=end, grouping=Grouping.DAY, meter=meter
            )
            totals[who.pk] = usage.total
            for bucket in usage.buckets:
                per_day[bucket.start] += bucket.value
        assert [b.value for b in buckets] == [per_day[b.start] for b in buckets]
        top = meter_top_customers(meter=meter, start=start, end=end)
        assert [(t.customer.pk, t.value) for t in top] == sorted(
            totals.items(), key=lambda item: (-item[1], item[0])
        )


def test_month_usage_for_alerts_matches_the_summary(world):
    customer, meters = world
    for meter in meters.values():
        usage = customers_month_usage(meter=meter, customer_ids=[customer.pk], now=NOW)
        summary = meter_usage_aggregate(
            meter=meter, customer=customer, start=MONTH, end=datetime(2026, 4, 1, tzinfo=UTC)
        )
        assert usage == {customer.pk: summary.aggregated_value}


def test_rejections_by_code_skip_dry_runs_and_other_meters():
    meter, other_meter = MeterFactory(), MeterFactory()
    customer = CustomerFactory()
    for dry_run in (False, True):
        batch = event_batch_create(source=EventBatch.Source.API, dry_run=dry_run)
        meter_events_ingest(
            events=[
                EventInput(event_name=meter.event_name, payload={"value": "1"}),
                EventInput(
                    event_name=meter.event_name,
                    payload={"stripe_customer_id": customer.external_id, "value": "x"},
                ),
                EventInput(
                    event_name=meter.event_name,
                    payload={"stripe_customer_id": customer.external_id, "value": "y"},
                ),
                EventInput(event_name=other_meter.event_name, payload={"value": "1"}),
            ],
            batch=batch,
        )
    since = datetime.now(UTC) - DAY
    counts = meter_rejections_by_code(meter=meter, since=since)
    assert [(c.code, c.count) for c in counts] == [
        ("meter_event_invalid_value", 2),
        ("meter_event_no_customer_defined", 1),
    ]
    latest = counts[0]
    assert latest.sample is not None and latest.sample["payload[value]"] == "y"  # the latest one
    assert "y" in latest.message and latest.last_at is not None
