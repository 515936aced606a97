"""A finance user enters usage on a meter's page (htmx form, customer type-ahead), sees it
appear at once below the form, finds it in the event explorer and cancels it there."""

from __future__ import annotations

import pytest

from events.models import MeterEvent
from tests.conftest import browser_login
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage_portal.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_finance_user_enters_usage_and_finds_it_in_the_explorer(page) -> None:
    UserFactory.create(username="fay-finance", role=Role.FINANCE)
    meter = MeterFactory.create(display_name="Search API calls", event_name="search_api")
    CustomerFactory.create(external_id="cus_acme", name="Acme Rockets")
    CustomerFactory.create(external_id="cus_other", name="Other Inc")
    page.on("dialog", lambda dialog: dialog.accept())

    browser_login(page, "fay-finance")
    page.goto(meter.get_absolute_url())
    panel = page.locator("#usage-entry")
    panel.locator("form.entry-form").wait_for()  # loaded by htmx

    # The type-ahead fills the datalist from the server as the user types.
    panel.locator("input[name=customer]").press_sequentially("cus_ac")
    page.locator("#customer-options option[value=cus_acme]").wait_for(state="attached")
    panel.locator("input[name=customer]").fill("cus_acme")
    panel.locator("input[name=value]").fill("abc")
    panel.locator("button[type=submit]").click()
    page.locator("#value-errors").wait_for()
    assert "must be a number" in page.locator("#value-errors").inner_text()

    panel.locator("input[name=value]").fill("42.5")
    panel.locator("input[name=identifier]").fill("typed-in-browser")
    panel.locator("button[type=submit]").click()
    page.locator("text=Recorded event typed-in-browser").wait_for()
    assert "typed-in-browser" in page.locator("#recent-events").inner_text()
    assert page.url.endswith(meter.get_absolute_url())  # no navigation: swapped in place
    event = MeterEvent.objects.get(identifier="typed-in-browser")
    assert str(event.value) == "42.5"

    page.click("nav.mainnav >> text=Events")
    page.fill("#id_identifier", "typed-in-browser")
    page.click("form.filters button[type=submit]")
    row = page.locator(f"#event-{event.pk}")
    row.wait_for()
    assert "cus_acme" in row.inner_text()
    assert "Manual entry by fay-finance" in row.inner_text()

    row.locator("button:has-text('Cancel')").click()
    page.locator(f"#event-{event.pk}.cancelled").wait_for()
    event.refresh_from_db()
    assert event.cancelled_at is not None
