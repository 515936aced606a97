"""Reads of the API app: keys, and Stripe's cursor paging over meters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Q, QuerySet

from api.errors import invalid, missing_resource
from api.models import ApiKey
from api.objects import summary_id
from customers.models import Customer
from events.models import MeterEvent
from meters.models import Meter
from usage.summaries import Grouping

_STEPS = {Grouping.HOUR: timedelta(hours=1), Grouping.DAY: timedelta(days=1)}


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


def customer_by_external_id(external_id: str) -> Customer:
    customer = Customer.objects.filter(external_id=external_id).first()
    if customer is None:
        raise invalid(
            f"No such customer: '{external_id[:100]}'", param="customer", code="resource_missing"
        )
    return customer


def event_by_identifier(identifier: str) -> MeterEvent | None:
    return MeterEvent.objects.select_related("meter").filter(identifier=identifier).first()


def summary_page(
    *,
    meter_public_id: str,
    start: datetime,
    end: datetime,
    grouping: str,
    limit: int,
    starting_after: str,
    ending_before: str,
) -> tuple[datetime, datetime, bool]:
    """The part of [start, end) that one page of summaries covers, oldest first, and whether
    more follow: ``limit`` windows after (or before) the summary with the given id."""
    step = _STEPS.get(Grouping(grouping))
    cursor = starting_after or ending_before
    if step is None:  # one summary for the whole range
        return (start, start, False) if cursor else (start, end, False)
    if not cursor:
        page_end = min(end, start + limit * step)
        return start, page_end, page_end < end
    param = "starting_after" if starting_after else "ending_before"
    at = _cursor_time(cursor, meter_public_id, param)
    if (at - start) % step or not start <= at < end:
        raise invalid(f"Invalid {param}: not a summary of this range.", param=param)
    if starting_after:
        page_start = at + step
        page_end = min(end, page_start + limit * step)
        return page_start, page_end, page_end < end
    page_start = max(start, at - limit * step)
    return page_start, at, page_start > start


def _cursor_time(cursor: str, meter_public_id: str, param: str) -> datetime:
    prefix = summary_id(meter_public_id, 0)[:-1]
    seconds = cursor.removeprefix(prefix)
    if seconds == cursor or not seconds.isdigit() or len(seconds) > 12:
        raise invalid(f"Invalid {param}: '{cursor[:100]}' is not a summary id.", param=param)
    return datetime.fromtimestamp(int(seconds), tz=UTC)
