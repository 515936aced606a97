"""Event pages: the explorer (every role), manual entry and cancellation (finance, admin).

Manual entry lives on the meter and customer pages: they include
``meters/event_entry_slot.html``, which loads the "Add usage" panel from ``event_entry`` with
htmx (and links to it as a page without JavaScript).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from customers.models import Customer
from customers.selectors import customer_options
from events.forms import EventEntryForm, EventFilterForm
from events.ingestion import Outcome, manual_event_record, meter_event_cancel
from events.models import MeterEvent
from events.selectors import (
    EventFilters,
    EventStatus,
    KeysetPage,
    event_explorer,
    event_source,
    event_status,
    events_recent,
)
from meters.models import Meter
from usage_portal.roles import Role, role_required
from usage_portal.types import HtmxHttpRequest

EVENTS_PER_PAGE = 50


@require_GET
@role_required(Role.SUPPORT)
def event_list(request: HtmxHttpRequest) -> HttpResponse:
    form = EventFilterForm(request.GET or None)
    page: KeysetPage[Any]
    if form.is_bound and not form.is_valid():
        page = KeysetPage(items=[], next_before=None)
    else:
        filters = form.filters() if form.is_bound else EventFilters()
        before = form.cleaned_data.get("before") if form.is_bound else None
        page = event_explorer(filters=filters, before=before, per_page=EVENTS_PER_PAGE)
    conflicts = form.is_bound and form.data.get("status") == EventStatus.CONFLICT
    query = request.GET.copy()
    query.pop("before", None)
    context = {
        "nav": "events",
        "form": form,
        "page": page,
        "rows": [_row(item, conflicts=conflicts) for item in page.items],
        "conflicts": conflicts,
        "query": query.urlencode(),
        "is_first_page": not request.GET.get("before"),
    }
    template = "events/event_list.html"
    if request.htmx and not request.htmx.boosted:
        template += "#results"
    return render(request, template, context)


def _row(item: Any, *, conflicts: bool) -> dict[str, Any]:
    label, url = event_source(item.batch)
    if conflicts:
        return {"rejection": item, "source_label": label, "source_url": url}
    return {
        "event": item,
        "status": event_status(item),
        "source_label": label,
        "source_url": url,
    }


@require_POST
@role_required(Role.FINANCE)
def event_cancel(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    event = get_object_or_404(
        MeterEvent.objects.select_related("meter", "customer", "batch__user", "batch__upload"),
        pk=pk,
    )
    error = ""
    try:
        event = meter_event_cancel(event=event, user=request.user)
    except ValidationError as exc:
        error = " ".join(exc.messages)
    if request.htmx:
        event = MeterEvent.objects.select_related(
            "meter", "customer", "batch__user", "batch__upload", "cancelled_by"
        ).get(pk=pk)
        row = _row(event, conflicts=False)
        return render(request, "events/event_list.html#row", {"row": row, "row_error": error})
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Event {event.identifier} cancelled.")
    return _redirect_back(request, reverse("events:event_list"))


def _redirect_back(request: HtmxHttpRequest, fallback: str) -> HttpResponseRedirect:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = fallback
    return redirect(target)


def _scope(request: HtmxHttpRequest) -> tuple[Meter | None, Customer | None]:
    """The page the entry panel sits on: a meter's (``for_meter``) or a customer's."""
    source = request.POST if request.method == "POST" else request.GET
    meter_id = source.get("for_meter", "")
    customer_pk = source.get("for_customer", "")
    meter = get_object_or_404(Meter, meter_id=meter_id) if meter_id else None
    customer = (
        get_object_or_404(Customer, pk=customer_pk)
        if customer_pk and customer_pk.isdigit()
        else None
    )
    return meter, customer


@require_http_methods(["GET", "POST"])
@role_required(Role.FINANCE)
def event_entry(request: HtmxHttpRequest) -> HttpResponse:
    """The "Add usage" panel: a form and the latest events of its meter or customer."""
    fixed_meter, fixed_customer = _scope(request)
    notice = ""
    created_pk = None
    if request.method == "POST":
        form = EventEntryForm(request.POST, fixed_meter=fixed_meter, fixed_customer=fixed_customer)
        if form.is_valid():
            meter = form.cleaned_data["meter"]
            entry = manual_event_record(
                user=request.user,
                meter=meter,
                customer_ref=form.cleaned_data["customer"].strip(),
                value=form.cleaned_data["value"],
                timestamp=form.cleaned_data["timestamp"],
                identifier=form.cleaned_data["identifier"].strip() or None,
            )
            result = entry.result
            if result.outcome == Outcome.REJECTED:
                form.add_core_error(result, meter)
            else:
                if result.outcome == Outcome.ACCEPTED:
                    notice = f"Recorded event {result.identifier}."
                else:
                    notice = (
                        f"An identical event {result.identifier} was already recorded; "
                        "it is not counted twice."
                    )
                created_pk = entry.event.pk if entry.event else None
                if not request.htmx:
                    messages.success(request, notice)
                    return _redirect_back(request, _entry_url(fixed_meter, fixed_customer))
                form = EventEntryForm(fixed_meter=fixed_meter, fixed_customer=fixed_customer)
    else:
        form = EventEntryForm(fixed_meter=fixed_meter, fixed_customer=fixed_customer)
    context = {
        "nav": "events",
        "form": form,
        "fixed_meter": fixed_meter,
        "fixed_customer": fixed_customer,
        "recent": events_recent(meter=fixed_meter, customer=fixed_customer),
        "notice": notice,
        "created_pk": created_pk,
        "next": request.POST.get("next") or request.GET.get("next") or "",
    }
    template = "events/event_entry.html"
    if request.htmx and not request.htmx.boosted:
        template += "#entry"
    status = 422 if request.method == "POST" and form.errors and not request.htmx else 200
    return render(request, template, context, status=status)


def _entry_url(meter: Meter | None, customer: Customer | None) -> str:
    url = reverse("events:event_entry")
    if meter is not None:
        return f"{url}?for_meter={meter.meter_id}"
    if customer is not None:
        return f"{url}?for_customer={customer.pk}"
    return url


@require_GET
@role_required(Role.FINANCE)
def event_customer_options(request: HtmxHttpRequest) -> HttpResponse:
    """``<option>``s for the manual-entry customer field's datalist, as the user types."""
    search = request.GET.get("customer") or request.GET.get("q") or ""
    return render(
        request,
        "events/event_entry.html#customer_options",
        {"options": customer_options(search=search)},
    )
