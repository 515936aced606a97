"""Manual entry: one event typed in by a staff member, through the core like any other."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from events.ingestion.batches import event_batch_create
from events.ingestion.pipeline import meter_events_ingest
from events.ingestion.types import EventInput, ManualEntryResult, Outcome
from events.models import EventBatch, MeterEvent
from meters.models import Meter


def manual_event_record(
    *,
    user: AbstractBaseUser,
    meter: Meter,
    customer_ref: str,
    value: str,
    timestamp: datetime | None = None,
    identifier: str | None = None,
    now: datetime | None = None,
) -> ManualEntryResult:
    """Record one event typed in by a staff member, through the core, as a manual batch."""
    payload = {meter.customer_mapping_key: customer_ref}
    if value.strip():
        payload[meter.value_settings_key] = value
    with transaction.atomic():
        batch = event_batch_create(source=EventBatch.Source.MANUAL, user=user)
        report = meter_events_ingest(
            events=[
                EventInput(
                    event_name=meter.event_name,
                    payload=payload,
                    identifier=identifier or None,
                    timestamp=timestamp,
                )
            ],
            batch=batch,
            now=now,
        )
    result = report.results[0]
    event = None
    if result.outcome != Outcome.REJECTED:
        event = MeterEvent.objects.select_related("meter", "customer").get(
            identifier=result.identifier
        )
    return ManualEntryResult(result=result, event=event)
