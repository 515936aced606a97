"""Customer pages: list with search, create, detail, edit and CSV import.

Every role reads; admins write. The detail page leaves ``<section id="customer-usage">`` for
the usage views of later work.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from customers import selectors as customers_selectors
from customers import services as customers_services
from customers.forms import CustomerCreateForm, CustomerEditForm, CustomerImportForm
from customers.models import Customer
from customers.services import customer_update, customers_import_csv
from usage_portal.audit import audit_entries_for
from usage_portal.pagination import page_of
from usage_portal.roles import Role, role_required
from usage_portal.types import HtmxHttpRequest

CUSTOMERS_PER_PAGE = 50
# An import can report up to 10,000 row errors; the page lists this many.
IMPORT_ERRORS_SHOWN = 1000


@require_GET
@role_required(Role.SUPPORT)
def customer_list(request: HtmxHttpRequest) -> HttpResponse:
    search = request.GET.get("q", "")
    page = page_of(
        customers_selectors.customer_list(search=search),
        number=request.GET.get("page"),
        per_page=CUSTOMERS_PER_PAGE,
    )
    template = "customers/customer_list.html"
    if request.htmx and not request.htmx.boosted:
        template += "#results"
    return render(request, template, {"nav": "customers", "page": page, "q": search})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def customer_create(request: HtmxHttpRequest) -> HttpResponse:
    form = CustomerCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            customer = customers_services.customer_create(actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Customer {customer.external_id} created.")
            return redirect(customer)
    return render(request, "customers/customer_form.html", {"nav": "customers", "form": form})


@require_GET
@role_required(Role.SUPPORT)
def customer_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, pk=pk)
    return render(
        request,
        "customers/customer_detail.html",
        {
            "nav": "customers",
            "customer": customer,
            "history": audit_entries_for(target=customer),
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def customer_edit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, pk=pk)
    form = CustomerEditForm(
        request.POST or None,
        initial={"name": customer.name, "email": customer.email, "metadata": customer.metadata},
    )
    if request.method == "POST" and form.is_valid():
        try:
            customer = customer_update(customer=customer, actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Customer {customer.external_id} saved.")
            return redirect(customer)
    return render(
        request,
        "customers/customer_form.html",
        {"nav": "customers", "form": form, "customer": customer},
    )


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def customer_import(request: HtmxHttpRequest) -> HttpResponse:
    form = CustomerImportForm(request.POST or None, request.FILES or None)
    result = None
    if request.method == "POST" and form.is_valid():
        result = customers_import_csv(actor=request.user, data=form.cleaned_data["file"].read())
        if result.file_error:
            form.add_error("file", result.file_error)
        elif result.rows_imported:
            messages.success(
                request,
                f"{result.rows_imported} of {result.rows_total} customers imported.",
            )
    return render(
        request,
        "customers/customer_import.html",
        {
            "nav": "customers",
            "form": form,
            "result": result,
            "errors_shown": result.errors[:IMPORT_ERRORS_SHOWN] if result else [],
        },
    )
