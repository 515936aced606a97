"""Usage pages: a customer's usage per meter, "explain this number", the meter overview and
its live feed, and usage alerts.

The customer and meter pages load their usage sections from here with htmx (see
``usage/usage_customer_slot.html`` and ``usage/usage_meter_slot.html``); without JavaScript
the same sections are full pages at the same URLs. Changing the range swaps only the section
and pushes the customer (or meter) page's URL with the choice in its query string, so the
address can be shared and reopens the same view.

Every quantity links to what it is made of: a period total to its buckets (the explain page),
a day to its hours, an hour to its events in the event explorer with the filters preset.

The range and alert forms live here rather than in a forms module because only these
views use them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import prefetch_related_objects
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET
from django_htmx.http import push_url

from customers.models import Customer
from events.selectors import EventStatus, event_source, events_recent
from meters.models import Meter
from usage.selectors import (
    UsageBucket,
    calendar_month,
    customer_usage_by_meter,
    meter_hourly_event_counts,
    meter_rejections_by_code,
    meter_top_customers,
    meter_usage_over_time,
)
from usage.summaries import Grouping
from usage_portal.roles import Role, role_required
from usage_portal.types import HtmxHttpRequest

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
# Ranges up to this long are grouped by hour, longer ones by day (the rule).
HOURLY_UP_TO = dt.timedelta(days=7)
MAX_CUSTOM_DAYS = 400
LIVE_FEED_EVENTS = 15
LIVE_FEED_POLL_SECONDS = 5
TOP_CUSTOMERS = 10


# --- Ranges ------------------------------------------------------------------------------------
PRESETS = [
    ("today", "Today"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("90d", "Last 90 days"),
    ("this_month", "This month"),
    ("last_month", "Last month"),
]
DEFAULT_PRESET = "this_month"


@dataclass(frozen=True)
class UsageRange:
    preset: str  # a PRESETS key or "custom"
    start: dt.datetime
    end: dt.datetime  # exclusive
    label: str

    @property
    def grouping(self) -> str:
        return Grouping.HOUR if self.end - self.start <= HOURLY_UP_TO else Grouping.DAY

    @property
    def last_day(self) -> dt.date:
        return (self.end - DAY).date()

    def query(self) -> dict[str, str]:
        if self.preset == "custom":
            return {
                "range": "custom",
                "start": self.start.date().isoformat(),
                "end": self.last_day.isoformat(),
            }
        return {"range": self.preset}


def preset_range(preset: str, now: dt.datetime) -> UsageRange:
    today = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow = today + DAY
    month_start, month_end = calendar_month(now)
    spans = {
        "today": (today, tomorrow),
        "7d": (tomorrow - 7 * DAY, tomorrow),
        "30d": (tomorrow - 30 * DAY, tomorrow),
        "90d": (tomorrow - 90 * DAY, tomorrow),
        "this_month": (month_start, month_end),
        "last_month": (calendar_month(month_start - DAY)[0], month_start),
    }
    start, end = spans[preset]
    return UsageRange(preset=preset, start=start, end=end, label=dict(PRESETS)[preset])


class UsageRangeForm(forms.Form):
    """The range (a preset or custom UTC dates, both inclusive) and, optionally, one meter."""

    range = forms.ChoiceField(
        choices=[*PRESETS, ("custom", "Custom")], required=False, label="Range"
    )
    start = forms.DateField(required=False, label="From (UTC)")
    end = forms.DateField(required=False, label="To (UTC, inclusive)")
    meter = forms.ModelChoiceField(
        queryset=Meter.objects.order_by("display_name"),
        to_field_name="meter_id",
        required=False,
        empty_label="All meters with usage",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        preset = data.get("range") or ""
        start, end = data.get("start"), data.get("end")
        if preset == "custom" or (not preset and (start or end)):
            if not start or not end:
                raise ValidationError("Give both dates of a custom range.", code="incomplete")
            if end < start:
                raise ValidationError("The range ends before it starts.", code="empty_range")
            if (end - start).days + 1 > MAX_CUSTOM_DAYS:
                raise ValidationError(
                    f"A range can span at most {MAX_CUSTOM_DAYS} days.", code="too_long"
                )
            data["range"] = "custom"
        return data

    def usage_range(self, now: dt.datetime) -> UsageRange:
        """The chosen range; the default when the form is invalid or empty."""
        if not self.is_valid():
            return preset_range(DEFAULT_PRESET, now)
        preset = self.cleaned_data.get("range") or DEFAULT_PRESET
        if preset != "custom":
            return preset_range(preset, now)
        first, last = self.cleaned_data["start"], self.cleaned_data["end"]
        start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        end = dt.datetime.combine(last, dt.time(), tzinfo=dt.UTC) + DAY
        label = f"{first:%Y-%m-%d} to {last:%Y-%m-%d}"
        return UsageRange(preset="custom", start=start, end=end, label=label)

    def chosen_meter(self) -> Meter | None:
        return self.cleaned_data.get("meter") if self.is_valid() else None


def _utc_param(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_param(text: str) -> dt.datetime | None:
    from events.forms import time_parse

    try:
        return time_parse(text)
    except ValidationError:
        return None


# --- Links between the levels of "explain this number" ----------------------------------------
def explain_url(
    customer: Customer, meter: Meter, start: dt.datetime, end: dt.datetime, **extra: str
) -> str:
    base = reverse("usage:usage_explain", kwargs={"pk": customer.pk, "meter_id": meter.meter_id})
    return f"{base}?{urlencode({'start': _utc_param(start), 'end': _utc_param(end), **extra})}"


def events_url(customer: Customer, meter: Meter, start: dt.datetime, end: dt.datetime) -> str:
    """The event explorer with the events of one bucket: counted ones only (cancelled and
    superseded events are not part of any figure)."""
    query = {
        "meter": meter.meter_id,
        "customer": customer.external_id,
        "start": _utc_param(start),
        "end": _utc_param(end),
        "status": EventStatus.ACCEPTED.value,
    }
    return f"{reverse('events:event_list')}?{urlencode(query)}"


@dataclass(frozen=True, slots=True)
class BucketRow:
    start: dt.datetime
    end: dt.datetime
    value: Decimal
    event_count: int
    url: str  # the next level down
    grouping: str
    label: str  # the bucket's start as the tables show it (UTC)
    display: str  # the value as shown: every digit, thousands separated


def bucket_rows(
    buckets: list[UsageBucket], grouping: str, customer: Customer | None, meter: Meter
) -> list[BucketRow]:
    """Table and chart rows, with the link one level down for buckets that have events.
    A page shows hundreds of these: the links are built from one ``reverse`` each."""
    hourly = grouping == Grouping.HOUR
    label_format = "%Y-%m-%d %H:%M" if hourly else "%Y-%m-%d"
    prefix = ""
    if customer is not None:
        if hourly:
            base = urlencode(
                {
                    "meter": meter.meter_id,
                    "customer": customer.external_id,
                    "status": EventStatus.ACCEPTED.value,
                }
            )
            prefix = f"{reverse('events:event_list')}?{base}&"
        else:
            explain = reverse(
                "usage:usage_explain", kwargs={"pk": customer.pk, "meter_id": meter.meter_id}
            )
            prefix = f"{explain}?"
    rows = []
    for bucket in buckets:
        url = ""
        if prefix and bucket.event_count:
            url = f"{prefix}start={_utc_param(bucket.start)}&end={_utc_param(bucket.end)}"
        rows.append(
            BucketRow(
                start=bucket.start,
                end=bucket.end,
                value=bucket.value,
                event_count=bucket.event_count,
                url=url,
                grouping=grouping,
                label=bucket.start.strftime(label_format),
                display=format(bucket.value, ","),
            )
        )
    return rows


def _push(response: HttpResponse, request: HtmxHttpRequest, page_url: str, query: str) -> None:
    """Put the choice in the address bar, unless this is the section's first load."""
    if request.htmx and request.htmx.trigger not in ("customer-usage-body", "meter-overview-body"):
        push_url(response, f"{page_url}?{query}" if query else page_url)


# --- Customer usage --------------------------------------------------------------------------
@require_GET
@role_required(Role.SUPPORT)
def customer_usage(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, pk=pk)
    form = UsageRangeForm(request.GET)
    usage_range = form.usage_range(timezone.now())
    meter = form.chosen_meter()
    usages = customer_usage_by_meter(
        customer=customer,
        start=usage_range.start,
        end=usage_range.end,
        grouping=usage_range.grouping,
        meter=meter,
    )
    query = usage_range.query()
    if meter is not None:
        query["meter"] = meter.meter_id
    sections = [
        {
            "usage": usage,
            "explain_url": explain_url(customer, usage.meter, usage.start, usage.end),
            "rows": bucket_rows(usage.buckets, usage.grouping, customer, usage.meter),
        }
        for usage in usages
    ]
    meter_query = {"meter": meter.meter_id} if meter else {}
    context = {
        "nav": "customers",
        "customer": customer,
        "form": form,
        "range": usage_range,
        "presets": [
            (key, label, urlencode({"range": key, **meter_query})) for key, label in PRESETS
        ],
        "meter": meter,
        "sections": sections,
        "query": urlencode(query),
        "usage_url": reverse("usage:customer_usage", kwargs={"pk": customer.pk}),
    }
    if request.htmx and not request.htmx.boosted:
        response = render(request, "usage/usage_customer.html#usage", context)
        _push(response, request, customer.get_absolute_url(), urlencode(query))
        return response
    return render(request, "usage/usage_customer.html", context)


@require_GET
@role_required(Role.SUPPORT)
def usage_explain(request: HtmxHttpRequest, pk: int, meter_id: str) -> HttpResponse:
    """One level of "explain this number": a quantity over a range and the buckets it is
    made of, each linking one level further down."""
    customer = get_object_or_404(Customer, pk=pk)
    meter = get_object_or_404(Meter, meter_id=meter_id)
    now = timezone.now()
    start = _parse_param(request.GET.get("start", ""))
    end = _parse_param(request.GET.get("end", ""))
    error = ""
    if start is None or end is None:
        default = preset_range(DEFAULT_PRESET, now)
        start, end = default.start, default.end
    grouping: str = Grouping.HOUR if end - start <= HOURLY_UP_TO else Grouping.DAY
    try:
        (usage,) = customer_usage_by_meter(
            customer=customer, start=start, end=end, grouping=grouping, meter=meter
        )
    except ValidationError as exc:
        error = " ".join(exc.messages)
        default = preset_range(DEFAULT_PRESET, now)
        start, end, grouping = default.start, default.end, default.grouping
        (usage,) = customer_usage_by_meter(
            customer=customer, start=start, end=end, grouping=grouping, meter=meter
        )
    rows = bucket_rows(usage.buckets, grouping, customer, meter)
    buckets_total = _combine(meter, usage.buckets)
    # The chain upwards: the month (or range) the day belongs to, for the breadcrumb.
    parent = None
    if end - start == DAY:
        month_start, month_end = calendar_month(start)
        parent = {
            "label": f"{month_start:%B %Y}",
            "url": explain_url(customer, meter, month_start, month_end),
        }
    context = {
        "nav": "customers",
        "customer": customer,
        "meter": meter,
        "usage": usage,
        "rows": rows,
        "grouping": grouping,
        "error": error,
        "parent": parent,
        "buckets_total": buckets_total,
        "adds_up": buckets_total == usage.total
        and sum(b.event_count for b in usage.buckets) == usage.event_count,
        "events_url": events_url(customer, meter, usage.start, usage.end),
        "back_url": f"{customer.get_absolute_url()}?{urlencode({'meter': meter.meter_id})}",
    }
    return render(request, "usage/usage_explain.html", context)


def _combine(meter: Meter, buckets: list[UsageBucket]) -> Decimal:
    """The period's figure from its buckets alone: the sum of the bucket values for sum and
    count meters, the latest non-empty bucket's value for "last" meters."""
    if meter.aggregation_formula == Meter.Formula.LAST:
        filled = [b for b in buckets if b.event_count]
        return filled[-1].value if filled else Decimal(0)
    return sum((b.value for b in buckets), Decimal(0))


# --- Meter overview ----------------------------------------------------------------------------
@require_GET
@role_required(Role.SUPPORT)
def meter_overview(request: HtmxHttpRequest, meter_id: str) -> HttpResponse:
    meter = get_object_or_404(Meter, meter_id=meter_id)
    form = UsageRangeForm(request.GET)
    now = timezone.now()
    usage_range = form.usage_range(now)
    buckets = meter_usage_over_time(
        meter=meter, start=usage_range.start, end=usage_range.end, grouping=usage_range.grouping
    )
    query = urlencode(usage_range.query())
    context = {
        "nav": "meters",
        "meter": meter,
        "form": form,
        "range": usage_range,
        "presets": [(key, label, urlencode({"range": key})) for key, label in PRESETS],
        "rows": bucket_rows(buckets, usage_range.grouping, None, meter),
        "total": _combine_across(buckets),
        "event_count": sum(b.event_count for b in buckets),
        "top": meter_top_customers(
            meter=meter, start=usage_range.start, end=usage_range.end, limit=TOP_CUSTOMERS
        ),
        "rejections": meter_rejections_by_code(meter=meter, since=now - DAY),
        "query": query,
        "overview_url": reverse("usage:meter_overview", kwargs={"meter_id": meter.meter_id}),
        **_live_context(meter, now),
    }
    if request.htmx and not request.htmx.boosted:
        response = render(request, "usage/usage_meter.html#overview", context)
        _push(response, request, meter.get_absolute_url(), query)
        return response
    return render(request, "usage/usage_meter.html", context)


def _combine_across(buckets: list[UsageBucket]) -> Decimal:
    return sum((b.value for b in buckets), Decimal(0))


def _live_context(meter: Meter, now: dt.datetime) -> dict[str, Any]:
    hour = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    hourly = meter_hourly_event_counts(meter=meter, start=hour - 23 * HOUR, end=hour + HOUR)
    events = events_recent(meter=meter, limit=LIVE_FEED_EVENTS)
    # Each event's source looks at its batch's upload: one query for all, not one per event.
    prefetch_related_objects([event.batch for event in events], "upload")
    return {
        "live_hours": bucket_rows(hourly, Grouping.HOUR, None, meter),
        "live_events": [{"event": event, "source": event_source(event.batch)} for event in events],
        "live_events_today": sum(b.event_count for b in hourly if b.start >= hour.replace(hour=0)),
        "live_url": reverse("usage:meter_live_feed", kwargs={"meter_id": meter.meter_id}),
        "poll_seconds": LIVE_FEED_POLL_SECONDS,
        "refreshed_at": now,
    }


@require_GET
@role_required(Role.SUPPORT)
def meter_live_feed(request: HtmxHttpRequest, meter_id: str) -> HttpResponse:
    """The live feed, polled by the overview while the page is open."""
    meter = get_object_or_404(Meter, meter_id=meter_id)
    if not request.htmx:
        return redirect(reverse("usage:meter_overview", kwargs={"meter_id": meter_id}))
    context = {"meter": meter, **_live_context(meter, timezone.now())}
    return render(request, "usage/usage_meter.html#live", context)
