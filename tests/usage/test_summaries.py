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
from usage.selectors import customer_usage_by_meter, customers_month_usage
from usage.summaries import (
    Grouping,
    UsageSummary,
    meter_event_summaries,
    meter_usage_aggregate,
    usage_by_meter_and_customer,
)

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


def test_last_breaks_a_tie_in_time_by_the_later_stored_event():
    meter = MeterFactory(aggregation_formula=Meter.Formula.LAST)
    customer = CustomerFactory()
    at = BASE + timedelta(hours=2, minutes=40)
    send(meter, customer, [(at, 5)])
    send(meter, customer, [(at, 3)])  # the same time, stored later: the last one
    send(meter, customer, [(at - timedelta(minutes=1), 9)])
    # The partial hour from raw events, the whole hour from its rollup, and both from events.
    for start, end, from_events in (
        (BASE + timedelta(hours=2, minutes=30), BASE + timedelta(hours=2, minutes=50), False),
        (BASE, BASE + timedelta(days=1), False),
        (BASE, BASE + timedelta(days=1), True),
    ):
        (summary,) = meter_event_summaries(
            meter=meter, customer=customer, start=start, end=end, from_events=from_events
        )
        assert (summary.aggregated_value, summary.event_count) == (Decimal(3), 3)


def test_an_hour_whose_events_are_all_cancelled_never_holds_the_last_value():
    """Its rollup stays with 0 events and no last event; every reader of a customer's usage
    (Stripe's summary and billing, the customer page, alerts) skips it alike."""
    meter = MeterFactory(aggregation_formula=Meter.Formula.LAST)
    customer = CustomerFactory()
    send(meter, customer, [(BASE + timedelta(hours=1, minutes=5), 5)])
    send(
        meter, customer, [(BASE + timedelta(hours=7), 8), (BASE + timedelta(hours=7, minutes=9), 7)]
    )
    user = UserFactory(username="canceller")
    for event in MeterEvent.objects.filter(meter=meter, timestamp__gte=BASE + timedelta(hours=7)):
        meter_event_cancel(event=event, user=user)
    month_end = datetime(2026, 4, 1, tzinfo=UTC)
    summary = meter_usage_aggregate(meter=meter, customer=customer, start=BASE, end=month_end)
    (usage,) = customer_usage_by_meter(
        customer=customer, start=BASE, end=month_end, grouping=Grouping.DAY, meter=meter
    )
    month = customers_month_usage(meter=meter, customer_ids=[customer.pk], now=NOW)
    assert (summary.aggregated_value, summary.event_count) == (Decimal(5), 1)
    assert (usage.total, usage.event_count) == (Decimal(5), 1)
    assert usage.last_event_at == BASE + timedelta(hours=1, minutes=5)
    assert month == {customer.pk: Decimal(5)}


def test_month_usage_of_many_customers_is_zero_for_those_without_usage():
    """More customers than one SQLite query may bind; ids without usage read as 0."""
    meter = MeterFactory(aggregation_formula=Meter.Formula.COUNT)
    customers = [CustomerFactory(), CustomerFactory()]
    for number, customer in enumerate(customers, start=1):
        send(meter, customer, [(BASE + timedelta(hours=h), 1) for h in range(number)])
    idle = list(range(10**9, 10**9 + 1200))
    usage = customers_month_usage(
        meter=meter, customer_ids=[*idle, customers[1].pk, customers[0].pk], now=NOW
    )
    assert len(usage) == 1202
    assert (usage[customers[0].pk], usage[customers[1].pk]) == (Decimal(1), Decimal(2))
    assert set(usage.values()) == {Decimal(0), Decimal(1), Decimal(2)}


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


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    items=st.lists(
        st.tuples(st.integers(0, SPAN_SECONDS - 1), values, st.integers(0, 2), st.integers(0, 1)),
        max_size=30,
    ),
    cancel_picks=st.lists(st.integers(0, 29), max_size=4),
    query=ranges(),
)
def test_one_read_for_many_meters_and_customers_matches_each_alone(items, cancel_picks, query):
    """``usage_by_meter_and_customer`` over several meters and customers at once gives each
    (meter, customer) its brute-force figure, and nothing for keys without counted events."""
    try:
        with transaction.atomic():
            user = UserFactory(username="canceller")
            meters = [
                MeterFactory(aggregation_formula=formula) for formula in ("sum", "count", "last")
            ]
            customers = [CustomerFactory(), CustomerFactory()]
            for meter_index, meter in enumerate(meters):
                for customer_index, customer in enumerate(customers):
                    chosen = [
                        (BASE + timedelta(seconds=s), v)
                        for s, v, m, c in items
                        if (m, c) == (meter_index, customer_index)
                    ]
                    if chosen:
                        send(meter, customer, chosen)
            stored = list(MeterEvent.objects.order_by("id"))
            for pick in cancel_picks:
                if pick < len(stored) and stored[pick].cancelled_at is None:
                    meter_event_cancel(event=stored[pick], user=user)
            start, end, grouping = query
            for from_events in (False, True):
                got = usage_by_meter_and_customer(
                    meter_ids=[m.pk for m in meters],
                    customer_ids=[c.pk for c in customers],
                    start=start,
                    end=end,
                    grouping=grouping,
                    from_events=from_events,
                )
                expected = {}
                for meter in meters:
                    for customer in customers:
                        for window_start, _, value, count in brute_force(
                            meter, customer, start, end, grouping
                        ):
                            if count:
                                expected[(meter.pk, customer.pk, window_start)] = (value, count)
                formulas = {m.pk: m.aggregation_formula for m in meters}
                assert {
                    key: (acc.value(formulas[key[0]]), acc.events) for key, acc in got.items()
                } == expected
            raise Rollback
    except Rollback:
        pass


def test_grouping_values():
    assert set(Grouping) == {"none", "hour", "day"}
