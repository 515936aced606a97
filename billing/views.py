"""Billing pages: prices, subscriptions, a customer's billing (estimate, invoices, credits).

Every role reads; only admins write.
"""

from __future__ import annotations

from decimal import Decimal
from itertools import islice

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import selectors, services
from billing.forms import MAX_TIERS, CreditGrantForm, PriceForm, SubscriptionForm
from billing.models import CreditGrant, Invoice, Price, Subscription
from billing.periods import Period
from billing.pricing import PricingError, price_amount
from customers.models import Customer
from usage_portal.audit import audit_entries_for
from usage_portal.forms import form_add_service_error
from usage_portal.pagination import page_of
from usage_portal.roles import Role, role_required
from usage_portal.types import HtmxHttpRequest

EXAMPLE_QUANTITIES = (Decimal(0), Decimal(1), Decimal(10), Decimal(1000))


# --- Prices ----------------------------------------------------------------------------------
@require_GET
@role_required(Role.SUPPORT)
def price_list(request: HtmxHttpRequest) -> HttpResponse:
    active = request.GET.get("status", "active")
    page = page_of(selectors.price_list(active=active), number=request.GET.get("page"))
    return render(
        request, "billing/price_list.html", {"nav": "prices", "page": page, "status": active}
    )


def _examples(form: PriceForm) -> list[tuple[Decimal, object]]:
    """What 0, 1, 10 and 1,000 units cost under the form's price, if it is valid."""
    if not form.is_valid():
        return []
    spec = PriceForm.spec_from(form.cleaned_data)
    try:
        return [(q, price_amount(spec, q)) for q in EXAMPLE_QUANTITIES]
    except PricingError:
        return []


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def price_create(request: HtmxHttpRequest) -> HttpResponse:
    replaces = None
    if replaces_pk := request.GET.get("replaces") or request.POST.get("replaces"):
        replaces = get_object_or_404(Price, pk=replaces_pk)
    initial: dict[str, object] = {}
    if replaces is not None:
        initial = PriceForm.initial_from_price(replaces)
    elif meter_id := request.GET.get("meter"):
        initial = {"meter": meter_id}
    tier_rows = int(request.POST.get("tier_rows") or 0)
    if "add_tier" in request.POST:
        tier_rows = min(MAX_TIERS, max(tier_rows, 1) + 1)
    form = PriceForm(request.POST or None, initial=initial, tier_rows=tier_rows)
    if request.method == "POST" and "add_tier" not in request.POST and form.is_valid():
        try:
            price = services.price_create(
                actor=request.user, replaces=replaces, **form.service_kwargs()
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Price {price.price_id} created.")
            return redirect(price)
    return render(
        request,
        "billing/price_form.html",
        {
            "nav": "prices",
            "form": form,
            "replaces": replaces,
            "examples": _examples(form) if form.is_bound else [],
        },
    )


@require_GET
@role_required(Role.ADMIN)
def price_example(request: HtmxHttpRequest) -> HttpResponse:
    """The live example under the price form: the form's values, priced at 0/1/10/1,000."""
    form = PriceForm(request.GET or None)
    return render(
        request,
        "billing/price_form.html#example",
        {"form": form, "examples": _examples(form) if form.is_bound else []},
    )


@require_GET
@role_required(Role.SUPPORT)
def price_detail(request: HtmxHttpRequest, price_pk: int) -> HttpResponse:
    price = get_object_or_404(Price.objects.select_related("meter", "replaces"), pk=price_pk)
    examples = [(q, price_amount(price.spec, q)) for q in EXAMPLE_QUANTITIES]
    return render(
        request,
        "billing/price_detail.html",
        {
            "nav": "prices",
            "price": price,
            "examples": examples,
            "replaced_by": getattr(price, "replaced_by", None),
            "subscription_items": price.subscription_items.select_related("subscription__customer")[
                :100
            ],
            "is_used": selectors.price_is_used(price=price),
            "history": audit_entries_for(target=price),
        },
    )


@require_POST
@role_required(Role.ADMIN)
def price_archive(request: HtmxHttpRequest, price_pk: int) -> HttpResponse:
    price = get_object_or_404(Price, pk=price_pk)
    services.price_archive(price=price, actor=request.user)
    messages.success(request, f"Price {price.price_id} archived.")
    return redirect(price)


@require_POST
@role_required(Role.ADMIN)
def price_unarchive(request: HtmxHttpRequest, price_pk: int) -> HttpResponse:
    price = get_object_or_404(Price, pk=price_pk)
    try:
        services.price_unarchive(price=price, actor=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Price {price.price_id} is active again.")
    return redirect(price)


# --- Subscriptions ---------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def subscription_create(request: HtmxHttpRequest, customer_pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, pk=customer_pk)
    form = SubscriptionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        licensed_quantity = data.get("licensed_quantity") or 1
        items = [
            services.ItemInput(price=p, quantity=1 if p.is_metered else licensed_quantity)
            for p in data["prices"]
        ]
        try:
            subscription = services.subscription_create(
                actor=request.user,
                customer=customer,
                items=items,
                interval=data["interval"],
                interval_count=data["interval_count"],
                start_date=data.get("start_date"),
                billing_cycle_anchor=data.get("billing_cycle_anchor"),
                backdate_start_date=data.get("backdate_start_date"),
            )
        except ValidationError as error:
            form_add_service_error(form, error)
        else:
            messages.success(request, f"Subscription {subscription.subscription_id} started.")
            return redirect(subscription)
    return render(
        request,
        "billing/subscription_form.html",
        {"nav": "customers", "form": form, "customer": customer},
    )


@require_GET
@role_required(Role.SUPPORT)
def subscription_detail(request: HtmxHttpRequest, subscription_pk: int) -> HttpResponse:
    subscription = get_object_or_404(
        Subscription.objects.select_related("customer"), pk=subscription_pk
    )
    now = timezone.now()
    upcoming = list(islice(subscription.schedule.periods(after=now), 4))
    return render(
        request,
        "billing/subscription_detail.html",
        {
            "nav": "customers",
            "subscription": subscription,
            "items": subscription.items.select_related("price__meter"),
            "current_period": subscription.schedule.period_at(now),
            "next_periods": upcoming,
            "invoices": subscription.invoices.all()[:24],
            "history": audit_entries_for(target=subscription),
            "now": now,
        },
    )


@require_POST
@role_required(Role.ADMIN)
def subscription_cancel(request: HtmxHttpRequest, subscription_pk: int) -> HttpResponse:
    subscription = get_object_or_404(Subscription, pk=subscription_pk)
    try:
        subscription = services.subscription_cancel_at_period_end(
            subscription=subscription, actor=request.user
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(
            request, f"The subscription ends at {subscription.ends_at:%Y-%m-%d %H:%M} UTC."
        )
    return redirect(subscription)


@require_POST
@role_required(Role.ADMIN)
def subscription_resume(request: HtmxHttpRequest, subscription_pk: int) -> HttpResponse:
    subscription = get_object_or_404(Subscription, pk=subscription_pk)
    try:
        services.subscription_resume(subscription=subscription, actor=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Cancellation withdrawn: the subscription continues.")
    return redirect(subscription)


# --- A customer's billing --------------------------------------------------------------------
def _billing_context(customer: Customer) -> dict[str, object]:
    now = timezone.now()
    return {
        "customer": customer,
        "now": now,
        "estimates": selectors.customer_estimates(customer=customer, now=now),
    }


@require_GET
@role_required(Role.SUPPORT)
def customer_billing(request: HtmxHttpRequest, customer_pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, pk=customer_pk)
    context = _billing_context(customer)
    now = timezone.now()
    context.update(
        {
            "nav": "customers",
            "late_events": selectors.customer_late_events(customer=customer),
            "subscriptions": selectors.customer_subscriptions(customer=customer),
            "invoices": selectors.customer_invoices(customer=customer)[:12],
            "grants": selectors.credit_grant_rows(customer=customer, now=now),
        }
    )
    return render(request, "billing/customer_billing.html", context)


@require_GET
@role_required(Role.SUPPORT)
def customer_estimate(request: HtmxHttpRequest, customer_pk: int) -> HttpResponse:
    """The upcoming-invoice estimate, as a partial for the customer page (htmx), or the
    customer's billing page without JavaScript."""
    customer = get_object_or_404(Customer, pk=customer_pk)
    if not request.htmx:
        return redirect("billing:customer_billing", customer_pk=customer.pk)
    return render(request, "billing/customer_billing.html#estimate", _billing_context(customer))


@require_GET
@role_required(Role.SUPPORT)
def customer_late_usage(request: HtmxHttpRequest, customer_pk: int) -> HttpResponse:
    """Late, not billed usage, as a partial for the customer page (htmx, loaded once), or
    the customer's billing page without JavaScript."""
    customer = get_object_or_404(Customer, pk=customer_pk)
    if not request.htmx:
        return redirect("billing:customer_billing", customer_pk=customer.pk)
    return render(
        request,
        "billing/customer_billing.html#late",
        {"customer": customer, "late_events": selectors.customer_late_events(customer=customer)},
    )


# --- Invoices --------------------------------------------------------------------------------
@require_GET
@role_required(Role.SUPPORT)
def invoice_list(request: HtmxHttpRequest, customer_pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, pk=customer_pk)
    page = page_of(selectors.customer_invoices(customer=customer), number=request.GET.get("page"))
    return render(
        request,
        "billing/invoice_list.html",
        {"nav": "customers", "customer": customer, "page": page},
    )


@require_GET
@role_required(Role.SUPPORT)
def invoice_detail(request: HtmxHttpRequest, invoice_pk: int) -> HttpResponse:
    invoice = get_object_or_404(
        Invoice.objects.select_related("customer", "subscription"), pk=invoice_pk
    )
    context: dict[str, object] = {"nav": "customers", "invoice": invoice}
    if invoice.is_draft:
        # A draft shows its lines as they stand; they freeze at finalization.
        period = Period(invoice.period_start, invoice.period_end)
        context["draft_lines"] = selectors.lines_compute(
            subscription=invoice.subscription, period=period
        )
    else:
        context["lines"] = selectors.invoice_lines(invoice=invoice)
        context["credit_transactions"] = invoice.credit_transactions.select_related("grant")
    return render(request, "billing/invoice_detail.html", context)


# --- Credit grants ---------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def credit_grant_create(request: HtmxHttpRequest, customer_pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, pk=customer_pk)
    form = CreditGrantForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            grant = services.credit_grant_create(
                actor=request.user,
                customer=customer,
                amount=data["amount_minor"],
                currency=data["currency"],
                category=data["category"],
                priority=data["priority"],
                effective_at=data.get("effective_at"),
                expires_at=data.get("expires_at"),
                prices=list(data.get("prices") or []),
                name=data.get("name") or "",
            )
        except ValidationError as error:
            form_add_service_error(form, error)
        else:
            messages.success(request, f"Credit grant {grant.grant_id} created.")
            return redirect("billing:customer_billing", customer_pk=customer.pk)
    return render(
        request,
        "billing/credit_grant_form.html",
        {"nav": "customers", "form": form, "customer": customer},
    )


@require_POST
@role_required(Role.ADMIN)
def credit_grant_void(request: HtmxHttpRequest, grant_pk: int) -> HttpResponse:
    grant = get_object_or_404(CreditGrant, pk=grant_pk)
    try:
        services.credit_grant_void(grant=grant, actor=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Credit grant {grant.grant_id} voided.")
    return redirect("billing:customer_billing", customer_pk=grant.customer_id)
