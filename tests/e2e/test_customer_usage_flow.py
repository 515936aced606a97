"""Support opens a customer, changes the range (the section is swapped and the URL can be
shared), and follows a number down to its events: the chain of numbers adds up."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from events.ingestion import EventInput, event_batch_create, meter_event_cancel, meter_events_ingest
from events.models import EventBatch, MeterEvent
from tests.conftest import browser_login
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage_portal.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def number(text: str) -> Decimal:
    return Decimal(text.strip().replace(",", ""))


def column_sum(page, selector: str) -> Decimal:
    return sum((number(text) for text in page.locator(selector).all_inner_texts()), Decimal(0))


def test_support_follows_a_number_down_to_its_events(page) -> None:
    support = UserFactory.create(username="sam-support", role=Role.SUPPORT)
    meter = MeterFactory.create(display_name="API calls")
    CustomerFactory.create(external_id="cus_acme", name="Acme")
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    batch = event_batch_create(source=EventBatch.Source.MANUAL, user=support)
    meter_events_ingest(
        events=[
            EventInput(
                event_name=meter.event_name,
                payload={"stripe_customer_id": "cus_acme", "value": value},
                timestamp=at,
            )
            for at, value in [
                (day + timedelta(hours=10, minutes=5), "1.5"),
                (day + timedelta(hours=10, minutes=20), "2"),
                (day + timedelta(hours=10, minutes=50), "3.25"),
                (day + timedelta(hours=10, minutes=55), "100"),  # cancelled below
                (day + timedelta(hours=14), "4"),
                (day + timedelta(days=1, hours=1), "10"),
            ]
        ],
        batch=batch,
    )
    meter_event_cancel(event=MeterEvent.objects.get(value=Decimal(100)), user=support)

    browser_login(page, "sam-support")
    page.click("nav.mainnav >> text=Customers")
    page.click("text=cus_acme")
    page.locator("#usage-title").wait_for()  # the usage section loaded itself
    assert "All times are UTC" in page.locator("#customer-usage-body").inner_text()

    # Change the range: only the section is swapped, and the address bar can be shared.
    page.click("#customer-usage-body >> text=Last 30 days")
    page.wait_for_url(re.compile(r"/customers/\d+/\?range=30d$"))
    page.locator("#customer-usage-body a[aria-current='true']:has-text('Last 30 days')").wait_for()
    row = page.locator(f"#usage-summary tr[data-meter='{meter.meter_id}']")
    total = number(row.locator("a.quantity").inner_text())
    assert total == Decimal("20.75")  # the cancelled 100 is left out
    assert number(row.locator("td").nth(3).inner_text()) == 5
    shared_url = page.url
    page.goto(shared_url)  # reopening the shared address shows the same choice
    page.locator("#customer-usage-body a[aria-current='true']:has-text('Last 30 days')").wait_for()

    # Level 1: the period total and its days.
    page.locator(f"#usage-summary tr[data-meter='{meter.meter_id}'] a.quantity").click()
    page.locator("#explain-quantity").wait_for()
    assert number(page.locator("#explain-quantity").inner_text()) == total
    assert column_sum(page, "#explain-table tbody td:nth-child(2)") == total
    assert "✓ Adds up" in page.locator("#explain-table tfoot").inner_text()

    # Level 2: the day and its hours.
    page.locator(f"#explain-table tbody tr:has-text('{day:%Y-%m-%d}') a").click()
    page.wait_for_url(re.compile(r"start="))
    day_total = number(page.locator("#explain-quantity").inner_text())
    assert day_total == Decimal("10.75")
    assert column_sum(page, "#explain-table tbody td:nth-child(2)") == day_total
    assert "✓ Adds up" in page.locator("#explain-table tfoot").inner_text()

    # Level 3: the hour's events in the event explorer, filters preset, with their source.
    hour_row = page.locator(f"#explain-table tbody tr:has-text('{day:%Y-%m-%d} 10:00')")
    hour_total = number(hour_row.locator("td").nth(1).inner_text())
    assert hour_total == Decimal("6.75")
    hour_row.locator("a").click()
    page.wait_for_url(re.compile(r"/events/\?"))
    page.locator("#event-table").wait_for()
    rows = page.locator("#event-table tbody tr.event-row")
    assert rows.count() == 3
    assert column_sum(page, "#event-table tbody tr.event-row td.num") == hour_total
    assert "Manual entry by sam-support" in page.locator("#event-table").inner_text()
    assert page.locator("#id_customer").input_value() == "cus_acme"
