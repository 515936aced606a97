"""Issue #12 §2: cancel and "Import the rest", wide files, the column limit, and a job's
heartbeat inside every long pass; §1: one meter's column missing."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from events.models import EventRejection
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory
from tests.uploads.conftest import HEADER, counted_events, day, post_upload, rollup_total, wait_for
from uploads import reading
from uploads.counters import ExternalCounter
from uploads.models import Upload
from uploads.pipeline import upload_process
from uploads.pulse import CancelRequested, Pulse
from uploads.services import upload_cancel, uploads_requeue_stale
from usage_portal.models import AuditEntry


def slow_file(rows: int) -> bytes:
    """Rows whose identifiers the core checks one by one (a backslash): slow chunks, so a
    cancellation lands while a chunk is being written."""
    body = "".join(
        f"{day()}T{(n // 3600) % 24:02d}:{(n // 60) % 60:02d}:{n % 60:02d}Z,api_calls,"
        f"cus_{n % 3 + 1},{n % 7},row\\{n}\n"
        for n in range(rows)
    )
    return (HEADER.rstrip("\n") + ",identifier\n" + body).encode()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_cancel_mid_import_then_import_the_rest_counts_the_file_exactly_once(
    celery_worker_factory, finance_client: Client, support_client: Client, api_meter, customers
) -> None:
    rows = 100_000
    # Twenty chunks: the cancellation is heard within a second (the job's pulse), long before
    # the other nineteen are through, whatever the database's speed (five chunks of 20,000
    # once raced the faster SQLite writer).
    # SQLite: a commit every second, not one for several chunks (see test_sqlite_spans).
    celery_worker_factory(
        env={"USAGE_UPLOAD_CHUNK_ROWS": "5000", "USAGE_UPLOAD_SQLITE_SPAN_SECONDS": "1"}
    )
    upload = post_upload(finance_client, slow_file(rows))
    wait_for(upload, lambda u: u.records_committed > 0)
    finance_client.post(f"/uploads/{upload.pk}/cancel/")
    upload = wait_for(upload)

    assert upload.status == Upload.Status.CANCELLED
    # Stopped mid-chunk: the chunks being written were rolled back, not committed.
    assert 0 < upload.records_committed < rows, "the import ended before the cancel"
    assert upload.records_committed % 5_000 == 0
    assert counted_events(api_meter) == upload.rows_imported == upload.records_committed
    page = finance_client.get(upload.get_absolute_url()).content.decode()
    assert "Import the rest" in page
    assert support_client.post(f"/uploads/{upload.pk}/import-rest/").status_code == 403

    finance_client.post(f"/uploads/{upload.pk}/import-rest/")
    upload = wait_for(upload)

    assert upload.status == Upload.Status.SUCCEEDED
    # The live rate was the second pass's: it began with the rows committed before.
    assert 0 < upload.import_start_rows < rows
    assert (upload.rows_read, upload.rows_imported, upload.rows_duplicate) == (rows, rows, 0)
    assert upload.committed_ranges == [[0, rows]]
    assert counted_events(api_meter) == rows
    assert rollup_total(api_meter) == (sum(Decimal(n % 7) for n in range(rows)), rows)
    assert AuditEntry.objects.filter(target_id=str(upload.pk), action="import").exists()
    assert "Import the rest" not in finance_client.get(upload.get_absolute_url()).content.decode()


@pytest.mark.django_db
def test_one_meters_value_column_missing_fails_only_that_meters_rows(
    finance_client: Client, api_meter: Meter, customers
) -> None:
    tokens = MeterFactory.create(
        event_name="tokens", display_name="Tokens", value_settings_key="tokens"
    )
    d = day()
    content = HEADER + f"{d},api_calls,cus_1,5\n{d},tokens,cus_2,7\n{d},api_calls,cus_3,2\n"
    upload = post_upload(finance_client, content.encode())
    upload_process(upload_id=upload.pk)
    upload.refresh_from_db()

    assert upload.status == Upload.Status.SUCCEEDED_WITH_ERRORS
    assert (upload.rows_imported, upload.rows_failed) == (2, 1)
    assert counted_events(api_meter) == 2 and counted_events(tokens) == 0
    rejection = EventRejection.objects.get(batch=upload.batch)
    assert (rejection.line, rejection.code, rejection.column) == (
        3,
        "column_missing",
        "payload_tokens",
    )
    assert "no payload_tokens (the value) column" in rejection.message
    assert "“Tokens”" in rejection.message and "Add the column" in rejection.message


@pytest.mark.django_db
def test_a_file_whose_only_meter_lacks_its_column_still_fails_at_once(
    finance_client: Client, api_meter: Meter, customers
) -> None:
    content = f"timestamp,event_name,payload_stripe_customer_id\n{day()},api_calls,cus_1\n"
    upload = post_upload(finance_client, content.encode())
    upload_process(upload_id=upload.pk)
    upload.refresh_from_db()
    assert upload.status == Upload.Status.FAILED
    assert "Required columns missing: payload_value" in upload.failed_reason


@pytest.mark.django_db
def test_a_wide_file_with_rejected_rows_finishes_and_its_page_shows_the_columns_that_matter(
    finance_client: Client, api_meter: Meter, customers, settings
) -> None:
    settings.USAGE_UPLOAD_MAX_COLUMNS = 100_000
    extra = 30_000
    header = HEADER.rstrip("\n") + "," + ",".join(f"note_{n}" for n in range(extra)) + "\n"
    filler = "," * extra
    d = day()
    rows = [f"{d},api_calls,cus_404,{n}{filler}\n" for n in range(30)]  # unknown customer
    rows += [f"{d},api_calls,cus_1,{n}{filler}\n" for n in range(10)]
    upload = post_upload(finance_client, (header + "".join(rows)).encode())
    upload_process(upload_id=upload.pk)
    upload.refresh_from_db()

    assert upload.status == Upload.Status.SUCCEEDED_WITH_ERRORS
    assert (upload.rows_imported, upload.rows_failed) == (10, 30)
    page = finance_client.get(upload.get_absolute_url()).content.decode()
    assert "cus_404" in page and "payload_stripe_customer_id</th>" in page
    assert "note_1</th>" not in page  # the file's other columns stay in the download
    response = finance_client.get(f"/uploads/{upload.pk}/errors.csv")
    download = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert download.decode("utf-8-sig").splitlines()[0].count(",") == 4 + extra + 2


@pytest.mark.django_db
def test_a_file_over_the_column_limit_fails_at_once_saying_the_limit(
    finance_client: Client, api_meter: Meter, customers, settings
) -> None:
    settings.USAGE_UPLOAD_MAX_COLUMNS = 5
    content = HEADER.rstrip("\n") + ",note,extra\n" + f"{day()},api_calls,cus_1,5,a,b\n"
    upload = post_upload(finance_client, content.encode())
    upload_process(upload_id=upload.pk)
    upload.refresh_from_db()
    assert upload.status == Upload.Status.FAILED
    assert "The header has 6 columns; at most 5 are accepted" in upload.failed_reason
    assert "delete the others" in upload.failed_reason
    assert counted_events(api_meter) == 0


def _running(upload: Upload) -> Upload:
    Upload.objects.filter(pk=upload.pk).update(
        status=Upload.Status.VALIDATING, run_token="run-1", heartbeat_at=timezone.now()
    )
    upload.refresh_from_db()
    return upload


@pytest.mark.django_db
def test_the_heartbeat_moves_during_a_long_validation_pass_so_the_job_is_not_requeued(
    finance_client: Client, api_meter: Meter, customers
) -> None:
    rows = 256 * 400
    content = (HEADER + f"{day()},api_calls,cus_1,1\n" * rows).encode()
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        upload = _running(post_upload(finance_client, content))
        started = upload.heartbeat_at
        assert started is not None
        ticks = iter(range(10**9))

        def clock() -> float:  # each pulse of the pass: a second goes by
            traveller.shift(timedelta(seconds=1))
            return float(next(ticks))

        pulse = Pulse(upload.pk, "run-1", heartbeat_seconds=30, clock=clock)
        lines = reading.text_lines(io.BytesIO(content), max_bytes=10**9, max_line_bytes=10**6)
        assert reading.inspect(lines, max_line_bytes=10**6, pulse=pulse).records == rows
        upload.refresh_from_db()

        assert upload.heartbeat_at is not None
        assert upload.heartbeat_at > started + timedelta(seconds=360)
        assert upload.pk not in uploads_requeue_stale(now=timezone.now())
        assert upload.pk in uploads_requeue_stale(now=timezone.now() + timedelta(seconds=301))


@pytest.mark.django_db
def test_a_cancellation_is_heard_inside_the_validation_and_counting_passes(
    finance_client: Client, finance_user, api_meter: Meter, customers, tmp_path
) -> None:
    content = (HEADER + f"{day()},api_calls,cus_1,1\n" * 2000).encode()
    upload = _running(post_upload(finance_client, content))
    ticks = iter(range(10**9))
    pulse = Pulse(upload.pk, "run-1", heartbeat_seconds=1, clock=lambda: float(next(ticks)))
    upload_cancel(upload=upload, user=finance_user)

    lines = reading.text_lines(io.BytesIO(content), max_bytes=10**9, max_line_bytes=10**6)
    with pytest.raises(CancelRequested):
        reading.inspect(lines, max_line_bytes=10**6, pulse=pulse)
    counter = ExternalCounter(tmp_path)
    with pytest.raises(CancelRequested):
        counter.finish(pulse=pulse)


@pytest.mark.django_db
def test_failed_rows_name_the_files_columns_say_what_to_do_and_are_summed_up_by_code(
    finance_client: Client, api_meter: Meter
) -> None:
    CustomerFactory.create(external_id="cus_ABC")
    d = day()
    content = HEADER + f'{d},api_calls,cus_ABC,1\n{d},api_calls,cus_ABC,"1,000"\n'
    content += f"{d},api_calls,cus_abc,2\n{d},api_calls,,3\n{d},api_calls,cus_ABC,\n"
    upload = post_upload(finance_client, content.encode())
    upload_process(upload_id=upload.pk)
    upload.refresh_from_db()

    assert (upload.rows_imported, upload.rows_failed) == (1, 4)
    by_line = {
        r.line: (r.column, r.message) for r in EventRejection.objects.filter(batch=upload.batch)
    }
    assert by_line[3] == (
        "payload_value",
        "The value in payload_value must be a number. Received '1,000'. Remove the thousands "
        "separator: write 1000.",
    )
    assert by_line[4] == (
        "payload_stripe_customer_id",
        "No customer was found with ID cus_abc. Did you mean cus_ABC?",
    )
    assert by_line[5] == (
        "payload_stripe_customer_id",
        "payload_stripe_customer_id is empty: fill in the customer's ID.",
    )
    assert by_line[6] == ("payload_value", "payload_value is empty: fill in the value (a number).")
    assert not any("payload[" in column + message for column, message in by_line.values())

    page = finance_client.get(upload.get_absolute_url()).content.decode()
    summary = page[page.index('id="error-summary"') : page.index('id="upload-errors"')]
    assert 'meter_event_invalid_value</code></td><td class="num">1</td>' in summary
    assert "no thousands separators" in summary and "IDs are case-sensitive" in summary


@pytest.mark.django_db
def test_excels_unicode_text_and_a_semicolon_csv_import_like_a_csv(
    finance_client: Client, api_meter: Meter, customers
) -> None:
    d = day()
    unicode_text = (
        "\ufefftimestamp\tevent_name\tpayload_stripe_customer_id\tpayload_value\r\n"
        f"{d}\tapi_calls\tcus_1\t2.5\r\n{d}\tapi_calls\tcus_2\t1,5\r\n"
    ).encode("utf-16-le")
    semicolons = (
        f"timestamp;event_name;payload_stripe_customer_id;payload_value\n{d};api_calls;cus_3;4\n"
    ).encode()
    first = post_upload(finance_client, unicode_text, name="usage.txt")
    second = post_upload(finance_client, semicolons)
    for upload in (first, second):
        upload_process(upload_id=upload.pk)
        upload.refresh_from_db()

    assert (first.rows_imported, first.rows_failed) == (1, 1)
    assert EventRejection.objects.get(batch=first.batch).message.endswith(
        "Use a dot for decimals: write 1.5."
    )
    assert (second.status, second.rows_imported) == (Upload.Status.SUCCEEDED, 1)
    assert rollup_total(api_meter) == (Decimal("6.5"), 2)
