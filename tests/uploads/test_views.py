"""Upload pages: forms, live partials, templates, the error table. The pipeline runs in the
test process here (the worker tests cover the asynchronous path)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from meters.models import Meter
from tests.factories import MeterFactory
from tests.uploads.conftest import HEADER, day, post_upload
from uploads.models import Upload
from uploads.pipeline import upload_process
from uploads.services import upload_revert, uploads_requeue_stale

pytestmark = pytest.mark.django_db

HTMX: dict[str, Any] = {"HTTP_HX_REQUEST": "true"}  # typed as Client.get/post **extra


def test_upload_page_has_help_templates_and_drop_zone(
    finance_client: Client, api_meter: Meter
) -> None:
    MeterFactory.create(
        event_name="tokens", display_name="Tokens", value_settings_key="tokens"
    )  # custom value key
    page = finance_client.get("/uploads/new/").content.decode()
    assert 'id="drop-zone"' in page and 'type="file"' in page
    assert "Up to 1 GB" in page
    assert f"/uploads/templates/{api_meter.meter_id}.csv" in page


def test_meter_template_uses_the_meter_keys(finance_client: Client) -> None:
    tokens = MeterFactory.create(event_name="tokens", value_settings_key="tokens")
    logins = MeterFactory.create(
        event_name="logins", customer_mapping_key="account", aggregation_formula="count"
    )
    text = finance_client.get(f"/uploads/templates/{tokens.meter_id}.csv").content.decode()
    assert text.splitlines()[0] == "timestamp,event_name,payload_stripe_customer_id,payload_tokens"
    text = finance_client.get(f"/uploads/templates/{logins.meter_id}.csv").content.decode()
    assert text.splitlines()[0] == "timestamp,event_name,payload_account"


def test_post_lands_on_the_upload_page_queued(finance_client: Client) -> None:
    response = finance_client.post(
        "/uploads/new/", {"file": _file(b"timestamp,event_name\n")}, follow=True
    )
    upload = Upload.objects.get()
    assert response.redirect_chain == [(upload.get_absolute_url(), 302)]
    assert 'data-status="queued"' in response.content.decode()
    assert upload.file.name and upload.file.storage.exists(upload.file.name)


def test_support_cannot_upload(support_client: Client) -> None:
    assert support_client.post("/uploads/new/", {"file": _file(b"x")}).status_code == 403
    assert not Upload.objects.exists()


def test_over_the_limit_fails_at_once_without_storing(finance_client: Client, settings) -> None:
    settings.USAGE_UPLOAD_MAX_BYTES = 10
    upload = post_upload(finance_client, b"timestamp,event_name\n2024-01-01,x\n")
    assert upload.status == Upload.Status.FAILED
    assert "larger than the limit of 10 bytes" in upload.failed_reason
    assert not upload.file


def _file(content: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("usage.csv", content, "text/csv")


def test_live_partial_polls_until_done_then_stops_with_286(
    finance_client: Client, api_meter: Meter, customers
) -> None:
    upload = post_upload(finance_client, (HEADER + f"{day()},api_calls,cus_1,4\n").encode())
    running = finance_client.get(upload.get_absolute_url(), **HTMX)
    assert running.status_code == 200
    assert 'hx-trigger="every 1s"' in running.content.decode()
    assert "<html" not in running.content.decode()

    upload_process(upload_id=upload.pk)
    done = finance_client.get(upload.get_absolute_url(), **HTMX)
    assert done.status_code == 286
    body = done.content.decode()
    assert "every 1s" not in body and 'data-status="succeeded"' in body
    assert 'id="rows-imported">1<' in body


def test_list_badges_poll_while_any_upload_is_active(
    support_client: Client, finance_client: Client, api_meter: Meter, customers
) -> None:
    upload = post_upload(finance_client, (HEADER + f"{day()},api_calls,cus_1,4\n").encode())
    page = support_client.get("/uploads/").content.decode()
    assert "usage.csv" in page and 'data-status="queued"' in page
    partial = support_client.get("/uploads/", **HTMX)
    assert partial.status_code == 200 and "every 2s" in partial.content.decode()

    upload_process(upload_id=upload.pk)
    partial = support_client.get("/uploads/", **HTMX)
    assert partial.status_code == 286
    assert 'data-status="succeeded"' in partial.content.decode()


def test_error_table_filters_by_code_and_paginates(
    finance_client: Client, api_meter: Meter, customers
) -> None:
    d = day()
    rows = [f"bad-{n},api_calls,cus_1,1\n" for n in range(60)]
    rows += [f"{d},api_calls,cus_missing,1\n", f"{d},api_calls,cus_1,<b>x</b>\n"]
    upload = post_upload(finance_client, (HEADER + "".join(rows)).encode())
    upload_process(upload_id=upload.pk)

    page = finance_client.get(upload.get_absolute_url()).content.decode()
    assert "timestamp_invalid (60)" in page
    assert "Failed rows 1\u201350" in page and "page=2" in page
    assert "&lt;b&gt;x&lt;/b&gt;" not in page  # on page 2: invalid value sorts by line

    partial = finance_client.get(
        upload.get_absolute_url(),
        {"code": "meter_event_invalid_value"},
        HTTP_HX_TARGET="upload-errors",
        **HTMX,
    ).content.decode()
    assert 'id="upload-errors"' in partial
    assert "<html" not in partial and "timestamp_invalid</code>" not in partial
    assert "&lt;b&gt;x&lt;/b&gt;" in partial and "<b>x</b>" not in partial

    second = finance_client.get(upload.get_absolute_url(), {"page": 2}).content.decode()
    assert "Failed rows 51\u201362" in second


def test_validate_only_failed_and_cancelled_cannot_be_reverted(
    finance_client: Client, api_meter: Meter, customers
) -> None:
    upload = post_upload(
        finance_client, (HEADER + f"{day()},api_calls,cus_1,4\n").encode(), validate_only=True
    )
    upload_process(upload_id=upload.pk)
    response = finance_client.post(f"/uploads/{upload.pk}/revert/", follow=True)
    assert "can be reverted" in response.content.decode()
    upload.refresh_from_db()
    assert upload.reverted_at is None


def test_revert_is_carried_out_by_a_worker_and_the_page_follows_it(
    finance_client: Client, api_meter: Meter, customers
) -> None:
    upload = post_upload(finance_client, (HEADER + f"{day()},api_calls,cus_1,4\n").encode())
    upload_process(upload_id=upload.pk)

    response = finance_client.post(f"/uploads/{upload.pk}/revert/", follow=True)
    page = response.content.decode()
    assert "Revert started" in page and 'id="reverting"' in page
    assert f"/uploads/{upload.pk}/revert/" not in page  # no second revert button
    live = finance_client.get(upload.get_absolute_url(), **HTMX)
    assert live.status_code == 200 and 'hx-trigger="every 1s"' in live.content.decode()
    # Asked twice: refused, and still one revert on its way.
    again = finance_client.post(f"/uploads/{upload.pk}/revert/", follow=True)
    assert "already on its way" in again.content.decode()
    # The broker lost the message: the periodic re-queue sends it again.
    later = timezone.now() + timedelta(hours=1)
    assert upload.pk in uploads_requeue_stale(now=later)

    upload_revert(upload_id=upload.pk)  # what the worker's task runs
    upload_revert(upload_id=upload.pk)  # a redelivered message does nothing more
    upload.refresh_from_db()
    assert upload.events_reverted == 1
    live = finance_client.get(upload.get_absolute_url(), **HTMX)
    assert live.status_code == 286 and 'id="reverted"' in live.content.decode()
    assert upload.pk not in uploads_requeue_stale(now=later)


@pytest.mark.django_db
def test_the_live_rate_and_time_left_are_the_import_passs_not_diluted_by_a_pause(
    finance_user,
) -> None:
    from uploads.selectors import upload_progress

    began = timezone.now() - timedelta(hours=2)
    resumed = began + timedelta(hours=1)  # "Import the rest", an hour after a cancellation
    upload = Upload(
        original_name="usage.csv",
        uploaded_by=finance_user,
        status=Upload.Status.IMPORTING,
        rows_total=100_000,
        rows_read=40_000,
        started_at=began,
        import_started_at=resumed,
        import_start_rows=40_000,
    )
    # Before the pass's first commit: no rate yet, rather than one diluted by the pause.
    waiting = upload_progress(upload=upload, now=resumed + timedelta(seconds=5))
    assert (waiting.rows_per_second, waiting.seconds_left) == (None, None)

    upload.rows_read = 60_000
    progress = upload_progress(upload=upload, now=resumed + timedelta(seconds=10))
    assert (progress.percent, progress.rows_per_second, progress.seconds_left) == (60, 2000, 20)

    # While the next chunk is written, the rate stays that of the last progress and the time
    # left counts down from it (it used to sink, and the estimate grew, until the next chunk).
    upload.heartbeat_at = resumed + timedelta(seconds=10)
    later = upload_progress(upload=upload, now=resumed + timedelta(seconds=15))
    assert (later.rows_per_second, later.seconds_left) == (2000, 15)
    late = upload_progress(upload=upload, now=resumed + timedelta(seconds=60))
    assert (late.rows_per_second, late.seconds_left) == (2000, 0)


def test_imported_per_meter_shows_the_usage_each_formula_adds(
    finance_client: Client, api_meter: Meter, count_meter: Meter, customers
) -> None:
    """A new user saw 999,998 for a count meter (the sum of a value column it ignores)."""
    MeterFactory.create(
        event_name="seats", display_name="Seats", aggregation_formula=Meter.Formula.LAST
    )
    d = day()
    rows = [
        f"{d}T0{n}:00:00Z,{name},cus_1,{value}\n"
        for n, (name, value) in enumerate(
            [("api_calls", 5), ("api_calls", 7), ("logins", 400), ("logins", 600), ("seats", 3)]
        )
    ]
    upload = post_upload(finance_client, (HEADER + "".join(rows)).encode())
    upload_process(upload_id=upload.pk)
    page = finance_client.get(upload.get_absolute_url()).content.decode()
    table = page[page.index('id="meter-totals"') :]
    table = table[: table.index("</table>")]
    cells = {
        name: table[table.index(f'<code class="muted">{name}</code>') :].split("</tr>")[0]
        for name in ("api_calls", "logins", "seats")
    }
    assert '<td class="num">12</td>' in cells["api_calls"]  # the values' sum
    assert '<td class="num">2</td>' in cells["logins"] and "1,000" not in cells["logins"]
    assert "latest value" in cells["seats"]
