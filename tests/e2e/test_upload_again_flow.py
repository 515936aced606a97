"""A finance user reverts an upload and uploads a corrected copy, and uploads two files of
identical rows as new usage: the totals shown are what the files say."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from customers.models import Customer
from meters.models import Meter
from tests.conftest import browser_login
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage_portal.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def number(text: str) -> Decimal:
    return Decimal(text.strip().replace(",", ""))


def upload(page, name: str, content: str, *, corrected_copy: bool = False) -> None:
    """Upload ``content`` through the form and wait on its page until it is done."""
    page.goto("/uploads/new/")
    page.set_input_files(
        "#id_file", {"name": name, "mimeType": "text/csv", "buffer": content.encode()}
    )
    if corrected_copy:
        page.check('input[name="rows_without_identifier"][value="corrected_copy"]')
    else:  # the default, as the page offers it
        assert page.is_checked('input[name="rows_without_identifier"][value="new_usage"]')
    page.click("button[type=submit].primary")
    page.wait_for_url("**/uploads/*/")
    page.wait_for_selector("#upload-status[data-status=succeeded]", timeout=60_000)


def customer_usage(page, customer: Customer, meter: Meter) -> tuple[Decimal, Decimal]:
    """The customer's usage of ``meter`` over the last 30 days, and its number of events, as
    the customer page shows them (a meter without usage has no row)."""
    page.goto(f"/customers/{customer.pk}/?range=30d")
    page.locator("#usage-title").wait_for()  # the usage section loaded itself
    row = page.locator(f"#usage-summary tr[data-meter='{meter.meter_id}']")
    if not row.count():
        return Decimal(0), Decimal(0)
    quantity = number(row.locator("a.quantity").inner_text())
    return quantity, number(row.locator("td").nth(3).inner_text())


def test_revert_then_upload_a_corrected_copy(page, celery_worker) -> None:
    meter = MeterFactory.create(event_name="api_calls", display_name="API calls")
    customer = CustomerFactory.create(external_id="cus_1")
    UserFactory.create(username="fiona-finance", role=Role.FINANCE)
    day = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%d")
    header = "timestamp,event_name,payload_stripe_customer_id,payload_value\n"
    first = header + "".join(f"{day}T0{hour}:00:00Z,api_calls,cus_1,10\n" for hour in range(3))
    corrected = first.replace("T01:00:00Z,api_calls,cus_1,10", "T01:00:00Z,api_calls,cus_1,25")
    corrected += f"{day}T05:00:00Z,api_calls,cus_1,5\n"  # a row the first file missed

    browser_login(page, "fiona-finance")
    upload(page, "march.csv", first, corrected_copy=True)
    assert page.inner_text("#rows-imported") == "3"
    upload_page = page.url
    assert customer_usage(page, customer, meter) == (Decimal(30), 3)

    page.goto(upload_page)
    page.on("dialog", lambda dialog: dialog.accept())  # "Revert this upload?"
    page.click("text=Revert upload")
    page.wait_for_selector("#reverted", timeout=60_000)  # the page follows the worker
    assert customer_usage(page, customer, meter) == (Decimal(0), 0)

    upload(page, "march-corrected.csv", corrected, corrected_copy=True)
    assert page.inner_text("#rows-imported") == "4"
    assert page.inner_text("#rows-duplicate") == "0"
    assert "50" in page.inner_text("#meter-totals")  # 10 + 25 + 10 + 5
    assert customer_usage(page, customer, meter) == (Decimal(50), 4)


def test_two_files_of_identical_rows_as_new_usage_both_count(page, celery_worker) -> None:
    meter = MeterFactory.create(
        event_name="logins", display_name="Logins", aggregation_formula=Meter.Formula.COUNT
    )
    customer = CustomerFactory.create(external_id="cus_1")
    UserFactory.create(username="fiona-finance", role=Role.FINANCE)
    day = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%d")
    header = "timestamp,event_name,payload_stripe_customer_id\n"

    browser_login(page, "fiona-finance")
    upload(page, "logins-1.csv", header + f"{day},logins,cus_1\n" * 3)
    assert page.inner_text("#rows-imported") == "3"
    upload(page, "logins-2.csv", header + f"{day},logins,cus_1\n" * 2)
    assert page.inner_text("#rows-imported") == "2"
    assert page.inner_text("#rows-duplicate") == "0"
    assert "New usage: count every row" in page.inner_text("#rows-without-identifier")
    assert customer_usage(page, customer, meter) == (Decimal(5), 5)
