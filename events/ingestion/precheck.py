"""One event checked ahead of storage: the API's creates answer at once, then keep the event
in an inbox that workers drain through ``meter_events_ingest`` (which checks it again).

``meter_event_precheck`` runs the one ``rules.validate`` against the event's meter, cached
in this process (read again after ``METER_CACHE_SECONDS``; a meter remapped meanwhile is
caught when the event is drained, and reported as any asynchronous rejection is), and
takes its customer as found: the caller keeps the event only if that customer exists, in
the statement that keeps it (so a create costs no lookup of its own). Anything not
certainly valid gives None: the caller then takes the full path, which records the
rejection and words it exactly as every source sees it (with "Did you mean …?" hints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from events.ingestion.rules import Candidate, Context, Rejected, accepted_window, clean, validate
from events.ingestion.types import EventInput
from meters.models import Meter

METER_CACHE_SECONDS = 2.0

_meters: dict[str, tuple[float, Meter]] = {}  # by event name: (read at, meter)


@dataclass(frozen=True, slots=True)
class Prechecked:
    """An event valid if ``customer_ref`` names a customer (``candidate.customer_id`` is 0:
    not looked up)."""

    candidate: Candidate
    customer_ref: str


def meter_event_precheck(event: EventInput, now: datetime) -> Prechecked | None:
    """``event`` as the core would accept it now if its customer exists (its identifier
    generated when missing), or None when it may not be valid."""
    meter = _meter(clean(event.event_name))
    if meter is None:
        return None
    ref = event.payload.get(meter.customer_mapping_key)
    ref = ref.strip() if isinstance(ref, str) else clean(ref)
    if not ref or "\x00" in ref:
        return None
    context = Context(
        now=now,
        window=accepted_window(now),
        meters={event.event_name: meter, meter.event_name: meter},
        customers={ref: 0},
    )
    try:
        return Prechecked(validate(0, event, context), ref)
    except Rejected:
        return None


def precheck_caches_clear() -> None:
    """Forget the cached meters (tests)."""
    _meters.clear()


def _meter(name: str) -> Meter | None:
    if not name or "\x00" in name:
        return None
    moment = time.monotonic()
    cached = _meters.get(name)
    if cached is not None and moment - cached[0] < METER_CACHE_SECONDS:
        return cached[1]
    meter = Meter.objects.filter(event_name=name).first()
    if meter is None:  # unknown names are not kept: a client could send endless ones
        _meters.pop(name, None)
        return None
    _meters[name] = (moment, meter)
    return meter
