from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from customers.models import Customer
from events.ingestion import EventInput, event_batch_create, meter_events_ingest
from events.models import EventBatch
from meters.models import Meter


def record_usage(
    meter: Meter,
    customer: Customer,
    value: str | int | Decimal,
    at: datetime,
    *,
    now: datetime | None = None,
    identifier: str | None = None,
) -> None:
    """Record one event through the ingestion core, as manual entry does."""
    batch = event_batch_create(source=EventBatch.Source.MANUAL)
    report = meter_events_ingest(
        events=[
            EventInput(
                event_name=meter.event_name,
                payload={
                    meter.customer_mapping_key: customer.external_id,
                    meter.value_settings_key: str(value),
                },
                timestamp=at,
                identifier=identifier,
            )
        ],
        batch=batch,
        now=now,
    )
    assert report.accepted == 1, report.results
