"""The overview's daily rollups through the real path: ingestion and cancellation commit, the
core enqueues the refresh after commit, a real Celery worker recomputes the stale days, and the
overview (now read from the daily rows) equals the hourly-rollup computation."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from events.ingestion import EventInput, event_batch_cancel, event_batch_create, meter_events_ingest
from events.models import EventBatch
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage.models import MeterDailyRollup, MeterMonthlyRollup, StaleUsageDay
from usage.selectors import meter_top_customers, meter_usage_over_time
from usage.summaries import Grouping

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
MONTH = datetime(2026, 3, 1, tzinfo=UTC)


def wait_until_fresh(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while StaleUsageDay.objects.exists():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the worker to refresh the daily rollups")
        time.sleep(0.2)


def assert_overview_exact(meters: list[Meter]) -> None:
    for meter in meters:
        for start, end, grouping in (
            (MONTH, MONTH + timedelta(days=31), Grouping.DAY),
            (MONTH + timedelta(days=4), MONTH + timedelta(days=11), Grouping.HOUR),
        ):
            fast, slow = (
                (
                    meter_usage_over_time(
                        meter=meter,
                        start=start,
                        end=end,
                        grouping=grouping,
                        from_hourly=from_hourly,
                    ),
                    meter_top_customers(meter=meter, start=start, end=end, from_hourly=from_hourly),
                )
                for from_hourly in (False, True)
            )
            assert fast == slow
            assert any(bucket.event_count for bucket in slow[0])


def test_the_worker_refreshes_the_days_that_ingestion_and_cancellation_touch(celery_worker):
    meters = [
        MeterFactory(aggregation_formula=Meter.Formula.SUM),
        MeterFactory(aggregation_formula=Meter.Formula.LAST),
    ]
    customers = [CustomerFactory() for _ in range(3)]
    batches = []
    for meter in meters:
        for rank, customer in enumerate(customers):
            batch = event_batch_create(source=EventBatch.Source.API)
            meter_events_ingest(
                events=[
                    EventInput(
                        event_name=meter.event_name,
                        payload={"stripe_customer_id": customer.external_id, "value": str(step)},
                        timestamp=MONTH + timedelta(days=3 + step % 8, hours=step % 24),
                    )
                    for step in range(1, 30 - 8 * rank)
                ],
                batch=batch,
                now=NOW,
            )
            batches.append(batch)
    wait_until_fresh()
    assert MeterDailyRollup.objects.filter(meter__in=meters).count() == 2 * 3 * 8
    assert MeterMonthlyRollup.objects.filter(meter__in=meters).count() == 2 * 3
    assert_overview_exact(meters)

    event_batch_cancel(batch=batches[0], user=UserFactory(username="worker-canceller"))
    event_batch_cancel(batch=batches[4], user=UserFactory(username="worker-canceller-2"))
    wait_until_fresh()
    assert MeterMonthlyRollup.objects.filter(meter__in=meters).count() == 2 * 2
    assert_overview_exact(meters)
