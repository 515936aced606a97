"""The plain store (SQLite, the embedded default): ORM writes, rollups recomputed in Python.

Receipt order. Events are created in input order, so their ids follow receipt order: "most
recently received" means the greatest id, also within one batch. SQLite serialises writers,
so no lock order is needed.
"""

from __future__ import annotations

from datetime import datetime

from events.ingestion.dedup import StoredRow
from events.ingestion.lookups import stored_by_identifier
from events.ingestion.rollups import plain_recompute, window_of
from events.ingestion.rules import Candidate
from events.models import EventBatch, MeterEvent


def plain_write(
    candidates: list[Candidate], batch: EventBatch, now: datetime
) -> dict[int, StoredRow]:
    """Insert the new events; return {candidate index: stored row} for identifiers taken."""
    stored = stored_by_identifier([c.identifier for c in candidates])
    existing = {c.index: stored[c.identifier] for c in candidates if c.identifier in stored}
    new = [c for c in candidates if c.index not in existing]
    if not new:
        return existing
    objects = MeterEvent.objects.bulk_create(
        [
            MeterEvent(
                identifier=c.identifier,
                meter=c.meter,
                customer_id=c.customer_id,
                timestamp=c.timestamp,
                value=c.value,
                payload=c.payload,
                batch=batch,
                line=c.line,
                received_at=now,
            )
            for c in new
        ],
        batch_size=500,
    )
    for candidate, obj in zip(new, objects, strict=True):
        candidate.event_id = obj.pk
    ranges = {(c.meter.pk, c.customer_id, *window_of(c.meter, c.timestamp)) for c in new}
    windowed = {c.meter.pk for c in new if c.meter.event_time_window}
    plain_recompute(ranges, windowed)
    return existing
