"""Two imports at once: no deadlock, nothing counted twice, rollups exact."""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from customers.models import Customer
from events.ingestion import (
    EventColumns,
    EventInput,
    Outcome,
    event_batch_create,
    meter_events_ingest,
    meter_events_ingest_columns,
)
from events.models import EventBatch, MeterEvent, UsageRollup
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory
from usage.summaries import meter_event_summaries, meter_usage_aggregate

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
START = NOW - timedelta(days=2)


def run_concurrently(*jobs):
    barrier = threading.Barrier(len(jobs))
    outcomes: list[object] = [None] * len(jobs)

    def worker(position, job):
        try:
            barrier.wait()
            outcomes[position] = job()
        except Exception as error:  # surfaced below
            outcomes[position] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors
    return outcomes


@pytest.mark.django_db(transaction=True)
def test_overlapping_imports_neither_deadlock_nor_double_count():
    raw = MeterFactory(event_name="calls")
    windowed = MeterFactory(event_name="seats", event_time_window=Meter.TimeWindow.DAY)
    customers = [CustomerFactory() for _ in range(5)]
    events = []
    for number in range(1200):
        meter = raw if number % 3 else windowed
        events.append(
            EventInput(
                event_name=meter.event_name,
                payload={
                    "stripe_customer_id": customers[number % 5].external_id,
                    "value": str(number % 7),
                },
                identifier=f"shared-{number}",
                timestamp=START + timedelta(minutes=number * 2),
            )
        )

    def ingest(ordered):
        batch = event_batch_create(source=EventBatch.Source.CSV)
        return meter_events_ingest(events=ordered, batch=batch, now=NOW)

    forward, backward = run_concurrently(
        lambda: ingest(events), lambda: ingest(list(reversed(events)))
    )
    assert forward.rejected == backward.rejected == 0
    assert forward.accepted + backward.accepted == len(events)
    assert forward.duplicates + backward.duplicates == len(events)
    assert MeterEvent.objects.count() == len(events)
    for identifier_result in forward.results:
        assert identifier_result.outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE)

    # The rollups agree with the raw events for every meter and customer.
    for meter in (raw, windowed):
        for customer in customers:
            from_rollups = meter_usage_aggregate(
                meter=meter, customer=customer, start=START, end=NOW
            )
            (from_events,) = meter_event_summaries(
                meter=meter, customer=customer, start=START, end=NOW, from_events=True
            )
            assert from_rollups == from_events
    raw_total = sum((r.value_sum for r in UsageRollup.objects.filter(meter=raw)), Decimal(0))
    assert raw_total == sum(Decimal(n % 7) for n in range(1200) if n % 3)


@pytest.mark.django_db(transaction=True)
def test_same_identifiers_with_different_content_race_to_one_winner():
    meter = MeterFactory(event_name="tokens")
    customer = CustomerFactory()

    def ingest(value):
        batch = event_batch_create(source=EventBatch.Source.API)
        return meter_events_ingest(
            events=[
                EventInput(
                    event_name="tokens",
                    payload={"stripe_customer_id": customer.external_id, "value": value},
                    identifier=f"race-{n}",
                    timestamp=NOW - timedelta(minutes=n + 1),
                )
                for n in range(300)
            ],
            batch=batch,
            now=NOW,
        )

    first, second = run_concurrently(lambda: ingest("1"), lambda: ingest("2"))
    assert first.accepted + second.accepted == 300
    assert first.rejected + second.rejected == 300  # duplicate_meter_event_conflict
    summary = meter_usage_aggregate(
        meter=meter, customer=customer, start=NOW - timedelta(days=1), end=NOW
    )
    assert summary.event_count == 300
    assert summary.aggregated_value == first.accepted * 1 + second.accepted * 2


def columns_of(rows: list[tuple[str, str, str, datetime, str]]) -> EventColumns:
    """(event name, identifier, customer ID, timestamp, value) rows as a file's columns."""
    return EventColumns(
        event_names=[row[0] for row in rows],
        timestamps=[int(row[3].timestamp()) for row in rows],
        identifiers=[row[1] for row in rows],
        payload={
            "stripe_customer_id": [row[2] for row in rows],
            "value": [row[4] for row in rows],
        },
        lines=list(range(2, len(rows) + 2)),
        raws=[{"event_name": row[0]} for row in rows],
    )


def assert_windows_decided(meter: Meter) -> None:
    """Each (customer, day) of ``meter`` counts its most recently received event (the
    greatest id) and no other, and the rollups say the same as the raw events."""
    events = list(MeterEvent.objects.filter(meter=meter).order_by("id"))
    last_of: dict[tuple[int, object], int] = {}
    for event in events:
        last_of[(event.customer_id, event.timestamp.date())] = event.pk
    assert {e.pk for e in events if not e.superseded} == set(last_of.values())
    for customer_id in {e.customer_id for e in events}:
        from_rollups = meter_usage_aggregate(
            meter=meter, customer=Customer(pk=customer_id), start=START, end=NOW
        )
        (from_events,) = meter_event_summaries(
            meter=meter, customer=Customer(pk=customer_id), start=START, end=NOW, from_events=True
        )
        assert from_rollups == from_events


@pytest.mark.django_db(transaction=True)
def test_overlapping_file_imports_decide_each_window_once():
    """Two files' chunks at once (the set-based path), rows for a windowed meter among raw
    ones, partly the same identifiers: each day counts one event, the last received."""
    raw = MeterFactory(event_name="calls")
    windowed = MeterFactory(
        event_name="seats", aggregation_formula="last", event_time_window=Meter.TimeWindow.DAY
    )
    refs = [CustomerFactory().external_id for _ in range(3)]
    rows = [
        (
            (windowed if n % 2 else raw).event_name,
            f"file-{n}",
            refs[n % 3],
            START + timedelta(minutes=n * 3),
            str(n % 11),
        )
        for n in range(900)
    ]

    def ingest(chunk):
        batch = event_batch_create(source=EventBatch.Source.CSV)
        return meter_events_ingest_columns(columns=columns_of(chunk), batch=batch, now=NOW)

    first, second = run_concurrently(lambda: ingest(rows[:600]), lambda: ingest(rows[300:]))
    assert first.accepted + second.accepted == 900
    assert first.duplicates + second.duplicates == 300
    assert_windows_decided(windowed)
    raw_total = sum((r.value_sum for r in UsageRollup.objects.filter(meter=raw)), Decimal(0))
    assert raw_total == sum(Decimal(n % 11) for n in range(900) if not n % 2)


@pytest.mark.django_db(transaction=True)
def test_a_new_winner_beaten_by_a_later_one_committed_first_does_not_count():
    """PostgreSQL draws ids before it locks a window: a batch whose ids come later can
    commit first. The window then counts that batch's event, the greater id, not the one
    that locked it last."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite draws ids under its one write lock: they cannot come out of turn")
    seats = MeterFactory(
        event_name="seats", aggregation_formula="last", event_time_window=Meter.TimeWindow.DAY
    )
    ref = CustomerFactory().external_id
    at = START + timedelta(hours=3)

    def ingest(identifier, value, ids_in_turn=nullcontext):
        batch = event_batch_create(source=EventBatch.Source.CSV)
        return meter_events_ingest_columns(
            columns=columns_of([("seats", identifier, ref, at, value)]),
            batch=batch,
            now=NOW,
            ids_in_turn=ids_in_turn,
        )

    @contextmanager
    def later_batch_commits_meanwhile():
        yield  # this batch's ids are drawn: another batch draws later ones and commits
        (later,) = run_concurrently(lambda: ingest("later", "7"))
        assert later.accepted == 1

    earlier = ingest("earlier", "5", later_batch_commits_meanwhile)

    assert earlier.accepted == 1
    stored = dict(MeterEvent.objects.values_list("identifier", "superseded"))
    assert stored == {"earlier": True, "later": False}
    assert (
        MeterEvent.objects.get(identifier="earlier").pk
        < MeterEvent.objects.get(identifier="later").pk
    )
    summary = meter_usage_aggregate(
        meter=seats, customer=Customer.objects.get(external_id=ref), start=START, end=NOW
    )
    assert summary.aggregated_value == Decimal(7)
    assert_windows_decided(seats)
