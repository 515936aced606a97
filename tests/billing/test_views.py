"""Billing pages: the price form with its live example, subscriptions, credits, estimate."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.test import Client

from billing import services
from billing.models import CreditGrant, Price, Subscription
from customers.models import Customer
from meters.models import Meter
from tests.billing.conftest import record_usage
from tests.factories import CustomerFactory, MeterFactory

pytestmark = pytest.mark.django_db

D = Decimal


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


TIERED_FORM = {
    "nickname": "API calls",
    "usage_type": "metered",
    "currency": "usd",
    "pricing_model": "graduated",
    "tier-0-up_to": "5",
    "tier-0-unit": "7",
    "tier-1-up_to": "10",
    "tier-1-unit": "6.50",
    "tier-2-up_to": "",
    "tier-2-unit": "6",
}


def test_admin_creates_a_tiered_price(admin_client_role: Client) -> None:
    meter = MeterFactory.create()
    response = admin_client_role.post(
        "/billing/prices/new/", {**TIERED_FORM, "meter": meter.meter_id}
    )
    price = Price.objects.get()
    assert response.status_code == 302
    assert response["Location"] == price.get_absolute_url()
    assert price.pricing_model == "graduated"
    assert price.tier_list[1].unit_amount == 650  # $6.50 in cents
    assert price.tier_list[2].up_to is None
    detail = admin_client_role.get(price.get_absolute_url()).content.decode()
    assert "$6.50" in detail


def test_price_form_reports_tier_errors(admin_client_role: Client) -> None:
    meter = MeterFactory.create()
    data = {**TIERED_FORM, "meter": meter.meter_id, "tier-1-up_to": "3"}
    response = admin_client_role.post("/billing/prices/new/", data)
    assert response.status_code == 200
    assert "ascending order" in response.content.decode()
    data = {**TIERED_FORM, "meter": meter.meter_id, "tier-2-up_to": "20"}
    assert (
        "last tier must go up to infinity"
        in admin_client_role.post("/billing/prices/new/", data).content.decode()
    )
    data = {**TIERED_FORM, "meter": meter.meter_id, "tier-1-unit": ""}
    assert (
        "Tier 2 needs a unit amount, a flat amount, or both"
        in admin_client_role.post("/billing/prices/new/", data).content.decode()
    )
    assert not Price.objects.exists()


def test_deactivated_meters_are_not_offered(admin_client_role: Client) -> None:
    meter = MeterFactory.create(status=Meter.Status.INACTIVE, deactivated_at=utc(2025, 1, 1))
    response = admin_client_role.post(
        "/billing/prices/new/", {**TIERED_FORM, "meter": meter.meter_id}
    )
    assert "Select a valid choice" in response.content.decode()
    assert not Price.objects.exists()


def test_live_example_prices_0_1_10_and_1000_units(admin_client_role: Client) -> None:
    meter = MeterFactory.create()
    response = admin_client_role.get(
        "/billing/prices/example/",
        {**TIERED_FORM, "meter": meter.meter_id},
        headers={"HX-Request": "true"},
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html  # the partial only
    # 0 -> $0, 1 -> $7, 10 -> $67.50, 1,000 -> 35 + 32.50 + 990 x 6 = $6,007.50
    for amount in ("$0.00", "$7.00", "$67.50", "$6,007.50"):
        assert amount in html
    package = admin_client_role.get(
        "/billing/prices/example/",
        {
            "usage_type": "metered",
            "meter": meter.meter_id,
            "currency": "jpy",
            "pricing_model": "package",
            "unit_amount": "500",
            "package_size": "100",
            "package_rounding": "up",
        },
    ).content.decode()
    assert "¥500" in package and "¥5,000" in package


def test_jpy_amounts_have_no_decimals_and_dp_limit(admin_client_role: Client) -> None:
    meter = MeterFactory.create()
    data = {
        "usage_type": "metered",
        "meter": meter.meter_id,
        "currency": "usd",
        "pricing_model": "per_unit",
        "unit_amount": "0.00000000000001",  # 14 decimals of a dollar = 12 of a cent: fine
    }
    assert admin_client_role.post("/billing/prices/new/", data).status_code == 302
    data["unit_amount"] = "0.000000000000001"  # 13 decimals of a cent
    response = admin_client_role.post("/billing/prices/new/", data)
    assert "at most 12 decimal places" in response.content.decode()


def test_new_version_prefills_and_archives_the_old_price(admin_client_role: Client) -> None:
    meter = MeterFactory.create()
    admin_client_role.post("/billing/prices/new/", {**TIERED_FORM, "meter": meter.meter_id})
    old = Price.objects.get()
    form_page = admin_client_role.get(f"/billing/prices/new/?replaces={old.pk}").content.decode()
    assert 'value="6.5"' in form_page
    response = admin_client_role.post(
        f"/billing/prices/new/?replaces={old.pk}",
        {**TIERED_FORM, "meter": meter.meter_id, "tier-2-unit": "5"},
    )
    new = Price.objects.exclude(pk=old.pk).get()
    assert response["Location"] == new.get_absolute_url()
    old.refresh_from_db()
    assert not old.active and new.replaces == old


def test_support_reads_but_cannot_write(support_client: Client) -> None:
    meter = MeterFactory.create()
    assert support_client.get("/billing/prices/").status_code == 200
    response = support_client.post("/billing/prices/new/", {**TIERED_FORM, "meter": meter.meter_id})
    assert response.status_code == 403
    assert not Price.objects.exists()


@time_machine.travel(utc(2025, 3, 16, 12), tick=False)
def test_subscription_and_credit_forms_and_the_estimate_on_the_customer_page(
    admin_client_role: Client, support_client: Client
) -> None:
    meter = MeterFactory.create()
    customer = CustomerFactory.create()
    admin_client_role.post("/billing/prices/new/", {**TIERED_FORM, "meter": meter.meter_id})
    price = Price.objects.get()
    response = admin_client_role.post(
        f"/billing/customers/{customer.pk}/subscriptions/new/",
        {
            "prices": [price.pk],
            "interval": "month",
            "interval_count": "1",
            "start_date": "2025-03-01T00:00",
        },
    )
    subscription = Subscription.objects.get()
    assert response["Location"] == subscription.get_absolute_url()
    assert subscription.start_date == utc(2025, 3, 1)
    response = admin_client_role.post(
        f"/billing/customers/{customer.pk}/credits/new/",
        {"amount": "10.00", "currency": "usd", "category": "promotional", "priority": "5"},
    )
    assert response.status_code == 302
    grant = CreditGrant.objects.get()
    assert grant.amount == 1000
    assert grant.applies_to_all_metered

    record_usage(meter, customer, 12, utc(2025, 3, 10))
    # The customer page loads the estimate with htmx; the partial has the lines.
    detail = support_client.get(customer.get_absolute_url()).content.decode()
    assert f"/billing/customers/{customer.pk}/estimate/" in detail
    partial = support_client.get(
        f"/billing/customers/{customer.pk}/estimate/", headers={"HX-Request": "true"}
    ).content.decode()
    assert "<html" not in partial
    assert "Tier 3 (11 and above): 2" in partial
    assert "$79.50" in partial  # subtotal
    assert "\u2212$10.00" in partial  # credits, with a minus sign
    assert "$69.50" in partial  # total
    assert "Projection, not a bill" in partial
    # Without JavaScript the link leads to the billing page, which has the same estimate.
    assert support_client.get(f"/billing/customers/{customer.pk}/estimate/").status_code == 302
    page = support_client.get(f"/billing/customers/{customer.pk}/").content.decode()
    assert "$69.50" in page and grant.grant_id in page


def test_subscription_form_errors_are_shown(admin_client_role: Client) -> None:
    customer: Customer = CustomerFactory.create()
    price = services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.PER_UNIT,
        meter=MeterFactory.create(),
        unit_amount_decimal=D(1),
    )
    response = admin_client_role.post(
        f"/billing/customers/{customer.pk}/subscriptions/new/",
        {"prices": [price.pk], "interval": "month", "interval_count": "40"},
    )
    assert response.status_code == 200
    assert "Bill every 1 to 36 months: the longest billing interval is 3 years." in (
        response.content.decode()
    )
    assert not Subscription.objects.exists()
