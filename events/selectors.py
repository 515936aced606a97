"""Reads of the write side: the event explorer and recent events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from django.db.models import Q, QuerySet

from customers.models import Customer
from events.models import EventBatch, EventRejection, MeterEvent
from meters.models import Meter

T = TypeVar("T")


# --- Event explorer ----------------------------------------------------------------------------
class EventStatus(StrEnum):
    ACCEPTED = "accepted"  # counted: neither cancelled nor superseded
    SUPERSEDED = "superseded"  # replaced by a newer event in its pre-aggregation window
    CANCELLED = "cancelled"
    CONFLICT = "conflict"  # a rejected duplicate_meter_event_conflict (an EventRejection)
    LATE = "late"  # received after the invoice covering its timestamp was finalized


EVENT_STATUS_CHOICES = [
    ("", "All events"),
    (EventStatus.ACCEPTED, "Accepted"),
    (EventStatus.SUPERSEDED, "Superseded"),
    (EventStatus.CANCELLED, "Cancelled"),
    (EventStatus.CONFLICT, "Conflicts"),
    (EventStatus.LATE, "Late, not billed"),
]


# Statuses whose rule belongs to a later stage: "late, not billed" needs the finalized
# invoices, which billing owns. Billing registers its filter here in its ``apps.py`` (the
# explorer does not import billing); a status without a filter matches nothing.
EXPLORER_STATUS_FILTERS: dict[str, Callable[[QuerySet[MeterEvent]], QuerySet[MeterEvent]]] = {}


@dataclass(frozen=True, slots=True)
class EventFilters:
    meter: Meter | None = None
    customer: Customer | None = None
    source: str = ""
    start: dt.datetime | None = None  # event timestamp, inclusive
    end: dt.datetime | None = None  # event timestamp, exclusive
    identifier: str = ""
    status: str = ""


@dataclass(frozen=True, slots=True)
class KeysetPage(Generic[T]):
    """Newest first. ``next_before`` is the id to pass as ``before`` for older rows."""

    items: list[T]
    next_before: int | None

    @property
    def has_next(self) -> bool:
        return self.next_before is not None


def event_status(event: MeterEvent) -> EventStatus:
    if event.cancelled_at is not None:
        return EventStatus.CANCELLED
    if event.superseded:
        return EventStatus.SUPERSEDED
    return EventStatus.ACCEPTED


def event_source(batch: EventBatch) -> tuple[str, str]:
    """(label, url) of where a batch came from: its upload's page, or who entered it."""
    upload = getattr(batch, "upload", None)
    if upload is not None:
        if batch.source == EventBatch.Source.S3:
            who = batch.user.first_name if batch.user else "a connector"
            return f"S3 import ({who}) #{upload.pk}", upload.get_absolute_url()
        return f"CSV upload #{upload.pk}", upload.get_absolute_url()
    if batch.source == EventBatch.Source.MANUAL:
        who = batch.user.get_username() if batch.user else "unknown user"
        return f"Manual entry by {who}", ""
    return f"{batch.get_source_display()} (batch {batch.pk})", ""


def _keyset(queryset: QuerySet[Any], *, before: int | None, per_page: int) -> KeysetPage[Any]:
    if before is not None:
        queryset = queryset.filter(pk__lt=before)
    rows = list(queryset.order_by("-pk")[: per_page + 1])
    next_before = rows[per_page - 1].pk if len(rows) > per_page else None
    return KeysetPage(items=rows[:per_page], next_before=next_before)


def event_explorer(
    *, filters: EventFilters, before: int | None = None, per_page: int = 50
) -> KeysetPage[Any]:
    """Events (or, for status "conflict", conflict rejections) matching ``filters``, newest
    first, paginated by id so that a deep page costs what the first one does."""
    if filters.status == EventStatus.CONFLICT:
        rejections = EventRejection.objects.filter(code="duplicate_meter_event_conflict")
        if filters.meter is not None:
            rejections = rejections.filter(meter=filters.meter)
        if filters.customer is not None:
            rejections = rejections.filter(customer_ref=filters.customer.external_id)
        if filters.source:
            rejections = rejections.filter(batch__source=filters.source)
        if filters.start is not None:
            rejections = rejections.filter(created__gte=filters.start)
        if filters.end is not None:
            rejections = rejections.filter(created__lt=filters.end)
        if filters.identifier:
            rejections = rejections.filter(identifier=filters.identifier)
        return _keyset(
            rejections.select_related("meter", "batch__user", "batch__upload"),
            before=before,
            per_page=per_page,
        )
    events = MeterEvent.objects.select_related(
        "meter", "customer", "batch__user", "batch__upload", "cancelled_by"
    )
    if filters.meter is not None:
        events = events.filter(meter=filters.meter)
    if filters.customer is not None:
        events = events.filter(customer=filters.customer)
    if filters.source:
        events = events.filter(batch__source=filters.source)
    if filters.start is not None:
        events = events.filter(timestamp__gte=filters.start)
    if filters.end is not None:
        events = events.filter(timestamp__lt=filters.end)
    if filters.identifier:
        # Also the events a revert released the identifier of (they show it as sent).
        events = events.filter(
            Q(identifier=filters.identifier) | Q(released_identifier=filters.identifier)
        )
    if filters.status == EventStatus.ACCEPTED:
        events = events.filter(cancelled_at__isnull=True, superseded=False)
    elif filters.status == EventStatus.SUPERSEDED:
        events = events.filter(cancelled_at__isnull=True, superseded=True)
    elif filters.status == EventStatus.CANCELLED:
        events = events.filter(cancelled_at__isnull=False)
    elif filters.status in EXPLORER_STATUS_FILTERS:
        events = EXPLORER_STATUS_FILTERS[filters.status](events)
    elif filters.status:
        events = events.none()
    return _keyset(events, before=before, per_page=per_page)


def events_recent(
    *, meter: Meter | None = None, customer: Customer | None = None, limit: int = 10
) -> list[MeterEvent]:
    """The most recently received events of a meter and/or customer."""
    events = MeterEvent.objects.select_related("meter", "customer", "batch__user")
    if meter is not None:
        events = events.filter(meter=meter)
    if customer is not None:
        events = events.filter(customer=customer)
    return list(events.order_by("-pk")[:limit])
