"""Meter pages: list, create, detail, edit, deactivate and reactivate.

Every role reads; admins write. Deactivate and reactivate are confirmed POSTs that htmx does
in place (the list row or the detail page's status block); without JavaScript they are plain
form posts that redirect back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from meters import selectors as meters_selectors
from meters import services as meters_services
from meters.forms import MeterCreateForm, MeterEditForm
from meters.models import Meter
from meters.selectors import meter_sort_key
from meters.services import meter_update
from usage_portal.audit import audit_entries_for
from usage_portal.pagination import page_of
from usage_portal.roles import Role, role_required
from usage_portal.types import HtmxHttpRequest

METERS_PER_PAGE = 25


@require_GET
@role_required(Role.SUPPORT)
def meter_list(request: HtmxHttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    search = request.GET.get("q", "")
    sort = meter_sort_key(request.GET.get("sort", ""))
    page = page_of(
        meters_selectors.meter_list(status=status, search=search, sort=sort),
        number=request.GET.get("page"),
        per_page=METERS_PER_PAGE,
    )
    context = {
        "nav": "meters",
        "page": page,
        "status": status if status in Meter.Status.values else "",
        "q": search,
        "sort": sort,
        "statuses": Meter.Status.choices,
        "columns": [
            ("name", "Name"),
            ("event_name", "Event name"),
            ("formula", "Aggregation"),
            ("status", "Status"),
            ("created", "Created"),
        ],
    }
    template = "meters/meter_list.html"
    if request.htmx and not request.htmx.boosted:
        template += "#results"
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def meter_create(request: HtmxHttpRequest) -> HttpResponse:
    form = MeterCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            meter = meters_services.meter_create(actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Meter “{meter.display_name}” created.")
            return redirect(meter)
    return render(request, "meters/meter_form.html", {"nav": "meters", "form": form})


@require_GET
@role_required(Role.SUPPORT)
def meter_detail(request: HtmxHttpRequest, meter_id: str) -> HttpResponse:
    meter = get_object_or_404(Meter, meter_id=meter_id)
    return render(request, "meters/meter_detail.html", _detail_context(meter))


def _detail_context(meter: Meter, **extra: Any) -> dict[str, Any]:
    return {
        "nav": "meters",
        "meter": meter,
        "history": audit_entries_for(target=meter),
        **extra,
    }


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def meter_edit(request: HtmxHttpRequest, meter_id: str) -> HttpResponse:
    meter = get_object_or_404(Meter, meter_id=meter_id)
    form = MeterEditForm(request.POST or None, initial={"display_name": meter.display_name})
    if request.method == "POST" and form.is_valid():
        try:
            meter = meter_update(meter=meter, actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Meter “{meter.display_name}” saved.")
            return redirect(meter)
    return render(
        request, "meters/meter_form.html", {"nav": "meters", "form": form, "meter": meter}
    )


def _status_change(
    request: HtmxHttpRequest,
    meter_id: str,
    service: Callable[..., Meter],
    done: str,
) -> HttpResponse:
    meter = get_object_or_404(Meter, meter_id=meter_id)
    from_list = request.POST.get("from") == "list"
    error = ""
    try:
        meter = service(meter=meter, actor=request.user)
    except ValidationError as exc:
        error = " ".join(exc.messages)
        meter.refresh_from_db()
    if request.htmx:
        if from_list:
            return render(
                request, "meters/meter_list.html#row", {"meter": meter, "row_error": error}
            )
        return render(
            request,
            "meters/meter_detail.html#status",
            _detail_context(meter, status_error=error, status_done="" if error else done),
        )
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Meter “{meter.display_name}” {done}.")
    return redirect("meters:meter_list" if from_list else meter.get_absolute_url())


@require_POST
@role_required(Role.ADMIN)
def meter_deactivate(request: HtmxHttpRequest, meter_id: str) -> HttpResponse:
    return _status_change(request, meter_id, meters_services.meter_deactivate, "deactivated")


@require_POST
@role_required(Role.ADMIN)
def meter_reactivate(request: HtmxHttpRequest, meter_id: str) -> HttpResponse:
    return _status_change(request, meter_id, meters_services.meter_reactivate, "reactivated")
