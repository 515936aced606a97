"""Reads for meters, customers, the audit trail, and usage.

Two sections: meters/customers/audit first (foundation), usage and events at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import models
from django.db.models import Q, QuerySet

from meters.models import AuditEntry, Customer, Meter

# === Meters, customers and the audit trail ===================================================

T = TypeVar("T")

# Sort keys the meter list accepts: the visible column name, "-" for descending.
METER_SORTS: dict[str, tuple[str, ...]] = {
    "name": ("display_name", "id"),
    "event_name": ("event_name",),
    "formula": ("aggregation_formula", "display_name", "id"),
    "status": ("status", "display_name", "id"),
    "created": ("created", "id"),
}
METER_DEFAULT_SORT = "name"


def meter_sort_key(sort: str) -> str:
    """The sort actually used: ``sort`` if known, else the default."""
    return sort if sort.removeprefix("-") in METER_SORTS else METER_DEFAULT_SORT


def meter_list(*, status: str = "", search: str = "", sort: str = "") -> QuerySet[Meter]:
    """Meters filtered by status ("active", "inactive" or "" for all), searched by display
    or event name (case-insensitive, contains), ordered by a ``METER_SORTS`` key."""
    meters = Meter.objects.all()
    if status in Meter.Status.values:
        meters = meters.filter(status=status)
    search = search.strip()
    if search:
        meters = meters.filter(
            Q(display_name__icontains=search) | Q(event_name__icontains=search) | Q(meter_id=search)
        )
    sort = meter_sort_key(sort)
    fields = METER_SORTS[sort.removeprefix("-")]
    if sort.startswith("-"):
        fields = tuple(f"-{name}" for name in fields)
    return meters.order_by(*fields)


def customer_list(*, search: str = "") -> QuerySet[Customer]:
    """Customers whose ID, name or email contains ``search`` (case-insensitive), by ID.

    On PostgreSQL, trigram indexes (migration 0002) serve these ``icontains`` filters, so
    the search stays quick with 100,000+ customers; pair it with ``page_of`` (no COUNT).
    """
    customers = Customer.objects.all()
    search = search.strip()
    if search:
        customers = customers.filter(
            Q(external_id__icontains=search)
            | Q(name__icontains=search)
            | Q(email__icontains=search)
        )
    return customers.order_by("external_id")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, found without counting the whole result."""

    items: Sequence[T]
    number: int
    per_page: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def start_index(self) -> int:
        return (self.number - 1) * self.per_page + 1 if self.items else 0

    @property
    def end_index(self) -> int:
        return (self.number - 1) * self.per_page + len(self.items)


def page_of(queryset: QuerySet[Any], *, number: int | str | None, per_page: int = 25) -> Page[Any]:
    """Page ``number`` (1-based; anything invalid is page 1) of ``queryset``, fetching one
    extra row to learn whether a next page exists instead of running COUNT(*), which on a
    large filtered set costs as much as the search itself."""
    try:
        page_number = max(1, int(number or 1))
    except (TypeError, ValueError):
        page_number = 1
    offset = (page_number - 1) * per_page
    rows = list(queryset[offset : offset + per_page + 1])
    return Page(
        items=rows[:per_page],
        number=page_number,
        per_page=per_page,
        has_next=len(rows) > per_page,
    )


def audit_entries_for(*, target: models.Model, limit: int = 200) -> QuerySet[AuditEntry]:
    """The audit trail of one object, newest first, with the actors loaded."""
    return AuditEntry.objects.filter(
        target_type=target._meta.label_lower, target_id=str(target.pk)
    ).select_related("actor")[:limit]


# === end of meters, customers and the audit trail ============================================
