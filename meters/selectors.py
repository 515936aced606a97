"""Reads for meter definitions."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from meters.models import Meter

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
