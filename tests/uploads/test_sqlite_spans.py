"""The embedded default (SQLite): an import commits several chunks together (fewer commits,
issue #12 §4), the upload page shows its progress meanwhile, and a user's write during the
import does not wait for it to end."""

from __future__ import annotations

import re
import time
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from events.models import MeterEvent
from meters.models import Meter
from tests.uploads.conftest import counted_events, post_upload, rollup_total, wait_for
from tests.uploads.test_control import slow_file
from uploads.models import Upload

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


ROWS = 100_000


def _long_span_import(celery_worker_factory, client: Client, rows: int) -> Upload:
    """An upload of ``rows`` slow rows (5,000-row chunks) on SQLite, imported by a worker in
    one span unless someone else wants the lock."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's spans of chunks; PostgreSQL commits each chunk")
    celery_worker_factory(
        env={"USAGE_UPLOAD_CHUNK_ROWS": "5000", "USAGE_UPLOAD_SQLITE_SPAN_SECONDS": "600"}
    )
    return post_upload(client, slow_file(rows))


def _shown_imported(client: Client, upload: Upload) -> int:
    page = client.get(upload.get_absolute_url()).content.decode()
    figure = re.search(r'id="rows-imported">([\d,]+)<', page)
    assert figure, page[:2000]
    return int(figure.group(1).replace(",", ""))


def test_a_manual_entry_during_an_import_is_recorded_at_once_and_the_page_shows_progress(
    celery_worker_factory, finance_client: Client, api_meter: Meter, customers
) -> None:
    upload = _long_span_import(celery_worker_factory, finance_client, ROWS)
    rows = ROWS

    # Chunks are written and not committed: the page shows them all the same.
    deadline = time.monotonic() + 120
    while True:
        shown = _shown_imported(finance_client, upload)
        upload.refresh_from_db()
        if shown > 0 and upload.records_committed == 0:
            break
        assert not upload.is_finished, "the import ended before it was seen in progress"
        assert time.monotonic() < deadline, f"never seen in progress: {upload.status}"
        time.sleep(0.1)
    assert shown % 5_000 == 0 and upload.rows_imported == 0

    # A user's write is let in at the end of the chunk being written (without that it would
    # wait for the whole import, and fail after the lock timeout).
    customer = customers[0]
    response = finance_client.post(
        reverse("events:event_entry"),
        {"meter": api_meter.meter_id, "customer": customer.external_id, "value": "1000000"},
    )
    assert response.status_code == 302, response.content[:500]
    upload.refresh_from_db()
    assert not upload.is_finished, "the import ended before the entry was tried"
    assert 0 < upload.records_committed < rows  # what was written before it, committed
    assert MeterEvent.objects.filter(meter=api_meter, value=Decimal(1_000_000)).count() == 1

    upload = wait_for(upload)
    assert upload.status == Upload.Status.SUCCEEDED
    assert (upload.rows_read, upload.rows_imported) == (rows, rows)
    assert counted_events(api_meter) == rows + 1
    total = sum(Decimal(n % 7) for n in range(rows)) + 1_000_000
    assert rollup_total(api_meter) == (total, rows + 1)
    assert _shown_imported(finance_client, upload) == rows


def test_a_cancel_during_a_long_span_then_import_the_rest_counts_the_file_once(
    celery_worker_factory, finance_client: Client, api_meter: Meter, customers
) -> None:
    upload = _long_span_import(celery_worker_factory, finance_client, ROWS)
    rows = ROWS
    wait_for(upload, lambda u: _shown_imported(finance_client, u) > 0 or u.is_finished)
    assert upload.records_committed == 0
    finance_client.post(f"/uploads/{upload.pk}/cancel/")
    upload = wait_for(upload)

    assert upload.status == Upload.Status.CANCELLED
    # Heard within a second, it interrupted the writer: the chunk being written was rolled
    # back with its progress, and with it the span's (unless the cancel's own write, waiting
    # for the lock, made the writer commit them first). Never a part of a chunk.
    assert upload.records_committed < rows and upload.records_committed % 5_000 == 0
    assert counted_events(api_meter) == upload.rows_imported == upload.records_committed
    assert _shown_imported(finance_client, upload) == upload.rows_imported

    finance_client.post(f"/uploads/{upload.pk}/import-rest/")
    upload = wait_for(upload)
    assert upload.status == Upload.Status.SUCCEEDED
    assert (upload.rows_read, upload.rows_imported, upload.rows_duplicate) == (rows, rows, 0)
    assert counted_events(api_meter) == rows
    assert rollup_total(api_meter) == (sum(Decimal(n % 7) for n in range(rows)), rows)
