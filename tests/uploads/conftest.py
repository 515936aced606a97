from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from customers.models import Customer
from events.models import MeterEvent, UsageRollup
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory
from uploads.models import Upload

HEADER = "timestamp,event_name,payload_stripe_customer_id,payload_value\n"


def day(days_ago: int = 1) -> str:
    return (timezone.now() - timedelta(days=days_ago)).strftime("%Y-%m-%d")


def post_upload(
    client: Client,
    content: bytes,
    *,
    name: str = "usage.csv",
    validate_only: bool = False,
    rows_without_identifier: str = Upload.RowsWithoutIdentifier.NEW_USAGE,
) -> Upload:
    """Upload through the page, as a user would; return the upload it redirected to."""
    data: dict[str, object] = {
        "file": SimpleUploadedFile(name, content, "text/csv"),
        "rows_without_identifier": rows_without_identifier,
    }
    if validate_only:
        data["validate_only"] = "on"
    response = client.post("/uploads/new/", data)
    assert response.status_code == 302, response.content[:500]
    upload_pk = int(response["Location"].rstrip("/").rsplit("/", 1)[1])
    return Upload.objects.get(pk=upload_pk)


def wait_for(
    upload: Upload,
    condition: Callable[[Upload], bool] = lambda upload: upload.is_finished,
    *,
    timeout: float = 180,
) -> Upload:
    """Poll the database until ``condition`` holds (the worker runs in another process)."""
    deadline = time.monotonic() + timeout
    while True:
        upload.refresh_from_db()
        if condition(upload):
            return upload
        if time.monotonic() > deadline:
            pytest.fail(
                f"Upload {upload.pk} stuck: status={upload.status} read={upload.rows_read} "
                f"committed={upload.records_committed} reason={upload.failed_reason!r}"
            )
        time.sleep(0.2)


def counted_events(meter: Meter) -> int:
    return MeterEvent.objects.filter(meter=meter, cancelled_at__isnull=True).count()


def rollup_total(meter: Meter) -> tuple[Decimal, int]:
    """(sum, count) of the meter's rollups, added in Python (text on SQLite)."""
    rows = UsageRollup.objects.filter(meter=meter).values_list("value_sum", "event_count")
    return sum((value for value, _ in rows), Decimal(0)), sum(count for _, count in rows)


@pytest.fixture
def api_meter(db: None) -> Meter:
    return MeterFactory.create(event_name="api_calls", display_name="API calls")


@pytest.fixture
def count_meter(db: None) -> Meter:
    return MeterFactory.create(
        event_name="logins", display_name="Logins", aggregation_formula=Meter.Formula.COUNT
    )


@pytest.fixture
def customers(db: None) -> list[Customer]:
    return [CustomerFactory.create(external_id=f"cus_{n}") for n in range(1, 4)]


@pytest.fixture
def uploader(finance_user: User) -> User:
    return finance_user
