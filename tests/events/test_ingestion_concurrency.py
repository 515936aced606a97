"""Two imports at once: no deadlock, nothing counted twice, rollups exact."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from events.ingestion import EventInput, Outcome, event_batch_create, meter_events_ingest
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
