"""The summaries selector: alignment rules, empty windows, and a property test against a
brute-force computation over raw events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from usage.summaries import Grouping, UsageSummary, meter_event_summaries, meter_usage_aggregate

pytestmark = pytest.mark.django_db

BASE = datetime(2026, 3, 1, tzinfo=UTC)
NOW = BASE + timedelta(days=4)
SPAN_SECONDS = 3 * 24 * 3600


def send(meter, customer, items, *, now=NOW):
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
    return batch


# --- Examples --------------------------------------------------------------------------------
def test_partial_hours_at_the_edges_come_from_raw_events():
    meter = MeterFactory()
    customer = CustomerFactory()
    send(
        meter,
        customer,
        [
            (BASE + timedelta(hours=1, minutes=10), 1),  # before the range
            (BASE + timedelta(hours=1, minutes=30), 2),  # partial first hour
            (BASE + timedelta(hours=2, minutes=5), 4),  # whole hour
            (BASE + timedelta(hours=3, minutes=19, seconds=59), 8),  # partial last hour
            (BASE + timedelta(hours=3, minutes=20), 16),  # at the exclusive end
        ],
    )
    (summary,) = meter_event_summaries(
        meter=meter,
        customer=customer,
        start=BASE + timedelta(hours=1, minutes=30),
        end=BASE + timedelta(hours=3, minutes=20),
        grouping="none",
    )
    assert summary == UsageSummary(
        start=BASE + timedelta(hours=1, minutes=30),
        end=BASE + timedelta(hours=3, minutes=20),
        aggregated_value=Decimal(14),
        event_count=3,
    )


def test_every_window_is_returned_and_empty_ones_are_zero():
    meter = MeterFactory(aggregation_formula=Meter.Formula.LAST)
    customer = CustomerFactory()
    send(meter, customer, [(BASE + timedelta(days=1, hours=5), "2.5")])
    summaries = meter_event_summaries(
        meter=meter, customer=customer, start=BASE, end=BASE + timedelta(days=3), grouping="day"
    )
    assert [(s.start, s.end, s.aggregated_value, s.event_count) for s in summaries] == [
        (BASE, BASE + timedelta(days=1), Decimal(0), 0),
        (BASE + timedelta(days=1), BASE + timedelta(days=2), Decimal("2.5"), 1),
        (BASE + timedelta(days=2), BASE + timedelta(days=3), Decimal(0), 0),
    ]


def test_aggregate_helper_over_a_range():
    meter = MeterFactory(aggregation_formula=Meter.Formula.COUNT)
    customer = CustomerFactory()
    send(meter, customer, [(BASE + timedelta(hours=h), 3) for h in range(5)])
    summary = meter_usage_aggregate(
        meter=meter, customer=customer, start=BASE, end=BASE + timedelta(hours=4)
    )
    assert (summary.aggregated_value, summary.event_count) == (Decimal(4), 4)


@pytest.mark.parametrize(
    ("start", "end", "grouping", "message"),
    [
        (BASE + timedelta(seconds=30), BASE + timedelta(hours=1), "none", "minute boundary"),
        (BASE + timedelta(minutes=1), BASE + timedelta(hours=1), "hour", "hour boundary"),
        (BASE, BASE + timedelta(hours=1, minutes=5), "hour", "hour boundary"),
        (BASE + timedelta(hours=1), BASE + timedelta(days=1), "day", "00:00 UTC"),
        (BASE, BASE, "none", "after the start"),
        (BASE, BASE + timedelta(days=1), "week", "Unknown grouping"),
    ],
)
def test_misaligned_ranges_are_refused(start, end, grouping, message):
    with pytest.raises(ValidationError, match=message):
        meter_event_summaries(
            meter=MeterFactory(),
            customer=CustomerFactory(),
            start=start,
            end=end,
            grouping=grouping,
        )


def test_offset_times_are_accepted_when_aligned_in_utc():
    from zoneinfo import ZoneInfo

    start = datetime(2026, 3, 1, 5, 30, tzinfo=ZoneInfo("Asia/Kolkata"))  # 00:00 UTC
    summaries = meter_event_summaries(
        meter=MeterFactory(),
        customer=CustomerFactory(),
        start=start,
        end=start + timedelta(days=1),
        grouping="day",
    )
    assert summaries[0].start == BASE


# --- Property test ---------------------------------------------------------------------------
def brute_force(meter, customer, start, end, grouping):
    """Stripe's semantics computed naively from every stored event."""
    events = list(
        MeterEvent.objects.filter(meter=meter, customer=customer).values_list(
            "id", "timestamp", "value", "cancelled_at"
        )
    )
    live = [e for e in events if e[3] is None]
    if meter.event_time_window:
        # Only the most recently received (greatest id) live event per window counts.
        def window_key(moment):
            hour = moment.replace(minute=0, second=0, microsecond=0)
            return hour.replace(hour=0) if meter.event_time_window == "day" else hour

        winners = {}
        for event in live:
            key = window_key(event[1])
            if key not in winners or event[0] > winners[key][0]:
                winners[key] = event
        live = list(winners.values())
    step = {"hour": timedelta(hours=1), "day": timedelta(days=1)}.get(grouping)
    windows = []
    moment = start
    while moment < end:
        windows.append((moment, end if step is None else moment + step))
        if step is None:
            break
        moment += step
    expected = []
    for window_start, window_end in windows:
        inside = [e for e in live if window_start <= e[1] < window_end]
        if meter.aggregation_formula == "sum":
            value = sum((e[2] for e in inside), Decimal(0))
        elif meter.aggregation_formula == "count":
            value = Decimal(len(inside))
        else:
            value = max(inside, key=lambda e: (e[1], e[0]))[2] if inside else Decimal(0)
        expected.append((window_start, window_end, value, len(inside)))
    return expected


values = st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False)
event_items = st.lists(
    st.tuples(st.integers(0, SPAN_SECONDS - 1), values, st.integers(0, 2)), max_size=30
)


@st.composite
def ranges(draw):
    grouping = draw(st.sampled_from(["none", "hour", "day"]))
    unit = {"none": 60, "hour": 3600, "day": 86400}[grouping]
    units = SPAN_SECONDS // unit
    first = draw(st.integers(0, units - 1))
    last = draw(st.integers(first + 1, units))
    return BASE + timedelta(seconds=first * unit), BASE + timedelta(seconds=last * unit), grouping


class Rollback(Exception):
    pass


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    formula=st.sampled_from(["sum", "count", "last"]),
    window=st.sampled_from(["", "hour", "day"]),
    items=event_items,
    cancel_picks=st.lists(st.integers(0, 29), max_size=6),
    cancel_batch=st.booleans(),
    query=ranges(),
)
def test_summaries_match_brute_force(formula, window, items, cancel_picks, cancel_batch, query):
    try:
        with transaction.atomic():
            user = UserFactory(username="canceller")
            meter = MeterFactory(aggregation_formula=formula, event_time_window=window)
            customer, other = CustomerFactory(), CustomerFactory()
            batches = []
            for batch_number in range(3):
                chosen = [
                    (BASE + timedelta(seconds=s), v) for s, v, b in items if b == batch_number
                ]
                if chosen:
                    batches.append(send(meter, customer, chosen))
            send(meter, other, [(BASE + timedelta(hours=1), 500)])  # another customer's usage
            stored = list(MeterEvent.objects.filter(customer=customer).order_by("id"))
            for pick in cancel_picks:
                if pick < len(stored) and stored[pick].cancelled_at is None:
                    meter_event_cancel(event=stored[pick], user=user)
                    stored[pick].refresh_from_db()
            if cancel_batch and batches:
                event_batch_cancel(batch=batches[0], user=user)
            start, end, grouping = query
            expected = brute_force(meter, customer, start, end, grouping)
            for from_events in (False, True):
                got = meter_event_summaries(
                    meter=meter,
                    customer=customer,
                    start=start,
                    end=end,
                    grouping=grouping,
                    from_events=from_events,
                )
                assert [
                    (s.start, s.end, s.aggregated_value, s.event_count) for s in got
                ] == expected
            raise Rollback
    except Rollback:
        pass


def test_grouping_values():
    assert set(Grouping) == {"none", "hour", "day"}
