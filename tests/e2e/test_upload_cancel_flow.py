"""A finance user cancels an upload mid-import, then imports the rest of it from its page;
every row of the file ends up counted once."""

from __future__ import annotations

from decimal import Decimal

import pytest

from events.models import MeterEvent
from tests.conftest import browser_login
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from tests.uploads.conftest import rollup_total
from tests.uploads.test_control import slow_file
from uploads.models import Upload
from usage_portal.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_cancel_then_import_the_rest(page, celery_worker_factory) -> None:
    meter = MeterFactory.create(event_name="api_calls", display_name="API calls")
    for n in range(1, 4):
        CustomerFactory.create(external_id=f"cus_{n}")
    UserFactory.create(username="fiona-finance", role=Role.FINANCE)
    celery_worker_factory(env={"USAGE_UPLOAD_CHUNK_ROWS": "20000"})
    rows = 200_000
    content = slow_file(rows)

    browser_login(page, "fiona-finance")
    page.goto("/uploads/new/")
    page.set_input_files(
        "#id_file", files=[{"name": "usage.csv", "mimeType": "text/csv", "buffer": content}]
    )
    page.click("button[type=submit].primary")
    page.wait_for_url("**/uploads/*/")
    page.wait_for_selector('#upload-status[data-status="importing"]', timeout=60_000)

    page.on("dialog", lambda dialog: dialog.accept())  # "Cancel this upload?"
    page.click("text=Cancel upload")
    page.wait_for_selector('#upload-status[data-status="cancelled"]', timeout=30_000)
    # The page says what happened once, in its status, with no flash left behind.
    assert "Cancellation requested" not in page.inner_text("body")
    upload = Upload.objects.get()
    assert upload.records_committed < rows, "the import ended before the cancel"

    page.click("#import-rest")
    assert "Importing the rest" in page.inner_text("body")
    page.wait_for_selector('#upload-status[data-status="succeeded"]', timeout=120_000)
    assert page.inner_text("#rows-imported") == f"{rows:,}"
    assert MeterEvent.objects.filter(meter=meter).count() == rows
    assert rollup_total(meter) == (sum(Decimal(n % 7) for n in range(rows)), rows)
