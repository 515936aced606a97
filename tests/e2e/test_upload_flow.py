"""A finance user uploads a file with errors, watches it import, fixes the error file and
uploads it again; the meter totals come out right."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from events.models import UsageRollup
from meters.models import Meter
from tests.conftest import browser_login
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage_portal.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def meter_sum(meter: Meter) -> Decimal:
    values = UsageRollup.objects.filter(meter=meter).values_list("value_sum", flat=True)
    return sum(values, Decimal(0))


def test_upload_fix_and_reupload(page, celery_worker) -> None:
    meter = MeterFactory.create(event_name="api_calls", display_name="API calls")
    CustomerFactory.create(external_id="cus_1")
    UserFactory.create(username="fiona-finance", role=Role.FINANCE)
    day = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%d")
    rows = [f"{day}T{hour:02d}:00:00Z,api_calls,cus_1,10\n" for hour in range(20)]
    rows += [f"{day},api_calls,cus_1,ten\n", "yesterday,api_calls,cus_1,5\n"]
    content = "timestamp,event_name,payload_stripe_customer_id,payload_value\n" + "".join(rows)

    browser_login(page, "fiona-finance")
    page.goto("/uploads/new/")
    # Drag and drop the file onto the page, as a user would from their desktop.
    data_transfer = page.evaluate_handle(
        """(text) => { const dt = new DataTransfer();
             dt.items.add(new File([text], 'usage.csv', {type: 'text/csv'})); return dt; }""",
        content,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": data_transfer})
    assert page.inner_text("#drop-name") == "usage.csv"
    page.click("button[type=submit].primary")
    page.wait_for_url("**/uploads/*/")

    # Live progress: the page polls until the job ends.
    page.wait_for_selector('#upload-status[data-status="succeeded_with_errors"]', timeout=60_000)
    assert page.inner_text("#rows-read") == "22"
    assert page.inner_text("#rows-imported") == "20"
    assert page.inner_text("#rows-failed") == "2"
    assert "API calls" in page.inner_text("#meter-totals")
    assert "timestamp_invalid" in page.inner_text("#error-table")
    assert meter_sum(meter) == Decimal(200)

    # The error file, fetched through the page's own link.
    href = page.get_attribute("#error-file-link", "href")
    assert href
    response = page.request.get(href)
    assert response.ok
    failed = list(csv.DictReader(io.StringIO(response.text().lstrip("\ufeff"))))
    assert sorted(row["error_code"] for row in failed) == [
        "meter_event_invalid_value",
        "timestamp_invalid",
    ]
    for row in failed:
        if row["error_code"] == "timestamp_invalid":
            row["timestamp"] = day
        else:
            # Any number: uploaded as new usage (the default), a row counts even when it is
            # identical to one imported before.
            row["payload_value"] = "11"
    fixed = io.StringIO()
    writer = csv.DictWriter(fixed, fieldnames=list(failed[0]))
    writer.writeheader()
    writer.writerows(failed)

    page.goto("/uploads/new/")
    page.set_input_files(
        "#id_file",
        {"name": "fixed.csv", "mimeType": "text/csv", "buffer": fixed.getvalue().encode()},
    )
    page.click("button[type=submit].primary")
    page.wait_for_url("**/uploads/*/")
    page.wait_for_selector('#upload-status[data-status="succeeded"]', timeout=60_000)
    assert page.inner_text("#rows-imported") == "2"
    assert page.inner_text("#rows-failed") == "0"
    assert meter_sum(meter) == Decimal(216)

    # The uploads list shows both, with who uploaded them.
    page.goto("/uploads/")
    listing = page.inner_text("table")
    assert "usage.csv" in listing and "fixed.csv" in listing
