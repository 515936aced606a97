"""Reads of the API app: keys, and Stripe's cursor paging over meters."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from api.errors import invalid, missing_resource
from api.models import ApiKey
from meters.models import Meter


def api_key_list() -> QuerySet[ApiKey]:
    return ApiKey.objects.select_related("user", "created_by").prefetch_related("user__groups")


def meter_by_public_id(meter_id: str) -> Meter:
    meter = Meter.objects.filter(meter_id=meter_id).first()
    if meter is None:
        raise missing_resource(f"No such billing meter: '{meter_id[:100]}'")
    return meter


@dataclass(frozen=True)
class Page:
    meters: list[Meter]
    has_more: bool


def meter_page(*, limit: int, starting_after: str, ending_before: str, status: str) -> Page:
    """Meters newest first, as Stripe lists them, ``limit`` at a time after (or before) the
    meter with the given id."""
    meters = Meter.objects.all()
    if status:
        meters = meters.filter(status=status)
    cursor_id = starting_after or ending_before
    backwards = bool(ending_before) and not starting_after
    if cursor_id:
        cursor = Meter.objects.filter(meter_id=cursor_id).first()
        if cursor is None:
            param = "starting_after" if starting_after else "ending_before"
            raise invalid(
                f"No such billing meter: '{cursor_id[:100]}'", param=param, code="resource_missing"
            )
        older = Q(created__lt=cursor.created) | Q(created=cursor.created, pk__lt=cursor.pk)
        newer = Q(created__gt=cursor.created) | Q(created=cursor.created, pk__gt=cursor.pk)
        meters = meters.filter(newer if backwards else older)
    ordered = meters.order_by("created", "pk") if backwards else meters.order_by("-created", "-pk")
    found = list(ordered[: limit + 1])
    has_more = len(found) > limit
    found = found[:limit]
    if backwards:
        found.reverse()
    return Page(meters=found, has_more=has_more)
