"""Usage alert pages: the list, definition, detail and status changes."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from alerts import selectors as alerts_selectors
from alerts.models import UsageAlert
from alerts.services import usage_alert_create, usage_alert_status_set
from customers.models import Customer
from meters.models import Meter
from usage_portal.audit import audit_entries_for
from usage_portal.forms import form_add_service_error
from usage_portal.pagination import page_of
from usage_portal.roles import Role, role_required
from usage_portal.types import HtmxHttpRequest


# --- Alerts ------------------------------------------------------------------------------------
class AlertForm(forms.Form):
    title = forms.CharField(max_length=256)
    meter = forms.ModelChoiceField(
        queryset=Meter.objects.filter(status=Meter.Status.ACTIVE).order_by("display_name"),
        to_field_name="meter_id",
        empty_label="Choose a meter",
    )
    customer = forms.CharField(
        label="Customer ID",
        required=False,
        max_length=255,
        help_text="Leave empty to watch every customer.",
    )
    threshold = forms.DecimalField(
        label="Threshold",
        min_value=Decimal("0.000000000001"),
        max_digits=30,
        decimal_places=12,
        help_text="Fires when the customer's usage this calendar month (UTC) reaches this.",
    )
    webhook_url = forms.URLField(
        label="Webhook URL",
        required=False,
        max_length=2000,
        assume_scheme="https",
        help_text="Optional: receives a JSON POST when the alert fires.",
    )

    def clean_customer(self) -> Customer | None:
        external_id = self.cleaned_data.get("customer", "").strip()
        if not external_id:
            return None
        customer = Customer.objects.filter(external_id=external_id).first()
        if customer is None:
            raise ValidationError(f"No customer has the ID {external_id}.", code="unknown")
        return customer


@require_GET
@role_required(Role.SUPPORT)
def customer_alerts(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The alerts fired for one customer: a partial for the customer usage page (htmx), or a
    page of its own without JavaScript."""
    customer = get_object_or_404(Customer, pk=pk)
    context = {
        "nav": "customers",
        "customer": customer,
        "triggers": alerts_selectors.alert_triggers(customer=customer)[:10],
    }
    template = "alerts/customer_alerts.html"
    return render(request, template + "#triggers" if request.htmx else template, context)


@require_GET
@role_required(Role.SUPPORT)
def alert_list(request: HtmxHttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    page = page_of(
        alerts_selectors.alert_list(status=status), number=request.GET.get("page"), per_page=50
    )
    context = {
        "nav": "alerts",
        "page": page,
        "status": status if status in UsageAlert.Status.values else "",
        "statuses": UsageAlert.Status.choices,
        "triggers": alerts_selectors.alert_triggers()[:50],
    }
    return render(request, "alerts/alert_list.html", context)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def alert_create(request: HtmxHttpRequest) -> HttpResponse:
    initial = {"meter": request.GET.get("meter", ""), "customer": request.GET.get("customer", "")}
    form = AlertForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            alert = usage_alert_create(actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            form_add_service_error(form, error)
        else:
            messages.success(request, f"Alert “{alert.title}” created.")
            return redirect(alert)
    return render(request, "alerts/alert_form.html", {"nav": "alerts", "form": form})


@require_GET
@role_required(Role.SUPPORT)
def alert_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(UsageAlert.objects.select_related("meter", "customer"), pk=pk)
    triggers = list(alerts_selectors.alert_triggers(alert=alert)[:200].prefetch_related("attempts"))
    context = {
        "nav": "alerts",
        "alert": alert,
        "triggers": triggers,
        "history": audit_entries_for(target=alert),
        "transitions": [
            (status, label)
            for status, label in (
                ("active", "Activate"),
                ("inactive", "Deactivate"),
                ("archived", "Archive"),
            )
            if status != alert.status and alert.status != UsageAlert.Status.ARCHIVED
        ],
    }
    return render(request, "alerts/alert_detail.html", context)


@require_POST
@role_required(Role.ADMIN)
def alert_status(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(UsageAlert, pk=pk)
    try:
        alert = usage_alert_status_set(
            alert=alert, actor=request.user, status=request.POST.get("status", "")
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Alert “{alert.title}” is now {alert.get_status_display()}.")
    return redirect(alert)
