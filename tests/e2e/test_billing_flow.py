"""An admin creates a tiered price in the browser, subscribes a customer, and sees the
upcoming-invoice estimate on the customer page."""

from __future__ import annotations

import pytest
from django.utils import timezone

from billing.models import Price
from tests.billing.conftest import record_usage
from tests.conftest import browser_login
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage_portal.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_admin_creates_a_tiered_price_and_sees_the_estimate(page) -> None:
    UserFactory.create(username="ada-admin", role=Role.ADMIN)
    meter = MeterFactory.create(display_name="API calls", event_name="api_call")
    customer = CustomerFactory.create(external_id="cus_e2e", name="Acme")

    browser_login(page, "ada-admin")
    page.click("nav.mainnav >> text=Prices")
    page.click("text=New price")
    page.fill("#id_nickname", "API calls, graduated")
    page.select_option("#id_meter", meter.meter_id)
    page.select_option("#id_pricing_model", "graduated")
    page.fill("#id_tier-0-up_to", "5")
    page.fill("#id_tier-0-unit", "7")
    page.fill("#id_tier-1-up_to", "10")
    page.fill("#id_tier-1-unit", "6.50")
    page.fill("#id_tier-2-unit", "6")
    # The live example prices 0, 1, 10 and 1,000 units as the admin types.
    example = page.locator("#price-example")
    example.locator("text=$6,007.50").wait_for()
    assert example.locator("tr[data-quantity='10'] .example-amount").inner_text() == "$67.50"
    page.click("button:has-text('Create price')")
    page.locator("h1:has-text('API calls, graduated')").wait_for()
    price = Price.objects.get()
    assert price.pricing_model == "graduated"

    page.goto(f"/billing/customers/{customer.pk}/subscriptions/new/")
    page.check(f"input[name=prices][value='{price.pk}']")
    page.click("button:has-text('Start subscription')")
    page.locator("text=Subscription").first.wait_for()

    record_usage(meter, customer, 12, timezone.now())
    page.goto(customer.get_absolute_url())
    estimate = page.locator("#billing-estimate .estimate-lines")
    estimate.wait_for()  # loaded by htmx after the page
    assert estimate.locator(".line-quantity").inner_text() == "12"
    assert estimate.locator(".line-amount").inner_text() == "$79.50"
    assert "Tier 3 (11 and above)" in estimate.inner_text()
    assert (
        page.locator("#billing-estimate .projection")
        .inner_text()
        .startswith("Projection, not a bill")
    )
