"""An admin connects a bucket, tests the connection, syncs, and watches a CSV and a JSON-lines
file import; the usage is on the customer's page."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from events.models import UsageRollup
from meters.models import Meter
from tests.conftest import browser_login
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from tests.uploads.s3_support import MotoServer, moto_running
from usage_portal.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with moto_running() as server:
        yield server


def meter_sum(meter: Meter) -> Decimal:
    values = UsageRollup.objects.filter(meter=meter).values_list("value_sum", flat=True)
    return sum(values, Decimal(0))


def test_connect_a_bucket_and_watch_its_files_import(
    page: Any, moto: MotoServer, settings: Any, celery_worker_factory: Callable[..., Any]
) -> None:
    settings.USAGE_OUTBOUND_ALLOWED_HOSTS = "127.0.0.1"
    celery_worker_factory(env={"USAGE_OUTBOUND_ALLOWED_HOSTS": "127.0.0.1"})
    meter = MeterFactory.create(event_name="api_calls", display_name="API calls")
    customer = CustomerFactory.create(external_id="cus_1", name="Acme")
    UserFactory.create(username="ada-admin", role=Role.ADMIN)
    s3 = moto.client()
    s3.create_bucket(Bucket="acme-usage")
    # Inside the current month whatever the date (the customer page shows this month; the
    # worker, another process, checks timestamps against the real clock, so none is frozen).
    now = timezone.now()
    when = max(now - timedelta(hours=2), now.replace(day=1, hour=0, minute=0, second=0))
    csv_body = (
        "timestamp,event_name,payload_stripe_customer_id,payload_value\n"
        f"{when.strftime('%Y-%m-%dT%H:%M:%SZ')},api_calls,cus_1,30\n"
    )
    s3.put_object(Bucket="acme-usage", Key="usage/monday.csv", Body=csv_body.encode())
    stamp = int(when.timestamp())
    lines = [
        {
            "event_name": "api_calls",
            "timestamp": stamp,
            "payload": {"stripe_customer_id": "cus_1", "value": "12.5"},
        },
        {
            "event_name": "api_calls",
            "timestamp": stamp,
            "payload": {"stripe_customer_id": "cus_nobody", "value": "1"},
        },
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    s3.put_object(Bucket="acme-usage", Key="usage/tuesday.jsonl", Body=body)

    browser_login(page, "ada-admin")
    page.goto("/uploads/")
    page.click("text=S3 connectors")
    page.click("text=New connector")
    page.fill("#id_name", "acme-exports")
    page.fill("#id_bucket", "acme-usage")
    page.fill("#id_key_prefix", "usage/")
    page.fill("#id_endpoint_url", moto.url)
    page.fill("#id_access_key_id", "testing")
    page.fill("#id_secret_access_key", "testing")
    page.click("button[type=submit].primary")
    page.wait_for_url("**/uploads/s3/*/")

    page.click("text=Test connection")  # htmx: the answer replaces the test's box
    page.wait_for_selector("#test-result >> text=Connection works")
    assert "usage/monday.csv" in page.inner_text("#test-result")

    page.click("button:has-text('Sync now')")
    page.wait_for_selector("text=2 new")
    # The files' table polls until both have finished.
    page.wait_for_selector('#connector-files [data-status="Succeeded"]', timeout=60_000)
    page.wait_for_selector('#connector-files [data-status="Succeeded with errors"]', timeout=60_000)
    assert "no connectors" not in page.content().lower()
    assert meter_sum(meter) == Decimal("42.5")

    # The JSON-lines file's upload shows its failed event.
    page.click("text=usage/tuesday.jsonl")
    page.wait_for_url("**/uploads/*/")
    assert "customer" in page.inner_text("#error-table").lower()

    page.goto(f"/customers/{customer.pk}/")
    page.wait_for_selector("text=42.5")  # the usage section loads after the page
