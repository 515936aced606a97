"""What validation and deduplication compare against, read from the database: meters by
event name, customers by external id, stored events by identifier."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db.models.functions import Lower

from customers.models import Customer
from events.ingestion.dedup import StoredRow
from events.ingestion.rules import Context, accepted_window, clean
from events.ingestion.types import EventInput
from events.models import MeterEvent
from meters.models import Meter

IN_CHUNK = 500  # parameters per IN (...) on SQLite


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def meters_named(names: Iterable[str]) -> dict[str, Meter]:
    """The meters of ``names`` (as given or stripped), by event name."""
    # Names and IDs with NUL match nothing (and PostgreSQL refuses them as parameters).
    usable = {clean(name) for name in names}
    usable = {name for name in usable if name and "\x00" not in name}
    meters: dict[str, Meter] = {}
    for chunk in chunks(sorted(usable), IN_CHUNK):
        meters.update((m.event_name, m) for m in Meter.objects.filter(event_name__in=chunk))
    return meters


def context_build(now: datetime, meters: dict[str, Meter], refs: Iterable[str]) -> Context:
    """The validation context: ``meters``, the customers of ``refs`` (as given or stripped),
    the accepted window around ``now``."""
    usable = {clean(ref) for ref in refs}
    usable = {ref for ref in usable if ref and "\x00" not in ref}
    customers: dict[str, int] = {}
    for chunk in chunks(sorted(usable), IN_CHUNK):
        customers.update(
            Customer.objects.filter(external_id__in=chunk).values_list("external_id", "pk")
        )
    return Context(now=now, window=accepted_window(now), meters=meters, customers=customers)


def context_load(events: Sequence[EventInput], now: datetime) -> Context:
    """The validation context of ``events``: their meters and the customers they name."""
    meters = meters_named({event.event_name for event in events})
    key_of = {
        name: meters[clean(name)].customer_mapping_key
        for name in {event.event_name for event in events}
        if clean(name) in meters
    }
    refs: set[str] = set()
    for event in events:
        key = key_of.get(event.event_name)
        if key is not None:
            refs.add(clean(event.payload.get(key)))
    return context_build(now, meters, refs)


def stored_by_identifier(identifiers: Sequence[str]) -> dict[str, StoredRow]:
    """The stored content of those of ``identifiers`` already taken (any database)."""
    stored: dict[str, StoredRow] = {}
    for chunk in chunks(identifiers, IN_CHUNK):
        for identifier, *row in MeterEvent.objects.filter(identifier__in=chunk).values_list(
            "identifier", "meter_id", "customer_id", "timestamp", "value"
        ):
            stored[identifier] = tuple(row)
    return stored


def customers_like(refs: Iterable[str]) -> dict[str, str]:
    """For customer IDs that were not found: the existing ID each one matches ignoring case,
    where exactly one does (``cus_abc`` -> ``cus_ABC``). Asked only for refused rows, in one
    query per 500 IDs (usually one)."""
    wanted = {ref.lower() for ref in refs if ref and "\x00" not in ref}
    found: dict[str, set[str]] = defaultdict(set)
    for chunk in chunks(sorted(wanted), IN_CHUNK):
        folded = Customer.objects.annotate(folded=Lower("external_id"))
        for external_id in folded.filter(folded__in=chunk).values_list("external_id", flat=True):
            found[external_id.lower()].add(external_id)
    suggestions = {}
    for ref in set(refs):
        matches = found.get(ref.lower(), set()) - {ref}
        if len(matches) == 1:
            suggestions[ref] = next(iter(matches))
    return suggestions
