"""The upload pipeline end to end: real worker, real broker, real database."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from django.test import Client

from customers.models import Customer
from events.models import EventRejection, MeterEvent, UsageRollup
from meters.models import Meter
from tests.factories import MeterFactory
from tests.uploads.conftest import HEADER, counted_events, day, post_upload, rollup_total, wait_for
from uploads.models import Upload
from usage_portal.models import AuditEntry

COPY = Upload.RowsWithoutIdentifier.CORRECTED_COPY

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def mixed_file() -> bytes:
    d = day()
    return (
        "timestamp,event_name,payload_stripe_customer_id,payload_value,identifier\n"
        f"{d},api_calls,cus_1,5,\n"
        f"{d},api_calls,cus_1,5,\n"  # identical: a second, distinct event
        f"{d}T10:00:00+05:30,api_calls,cus_2,2.5,\n"
        f"not-a-date,api_calls,cus_1,1,\n"
        f"{d},api_calls,cus_404,3,\n"
        f"{d},logins,cus_3,,\n"
        f"{d},logins,cus_3,,given-id-1\n"
        f'{d},api_calls,cus_1,=HYPERLINK("http://evil"),\n'
        f"{d},api_calls,cus_2,-1.5,\n"
    ).encode()


def test_upload_imports_valid_rows_and_explains_the_others(
    celery_worker, finance_client: Client, api_meter: Meter, count_meter: Meter, customers
) -> None:
    content = mixed_file()  # once: "yesterday" may change between two calls
    upload = wait_for(post_upload(finance_client, content, rows_without_identifier=COPY))

    assert upload.status == Upload.Status.SUCCEEDED_WITH_ERRORS
    assert (upload.rows_total, upload.rows_read) == (9, 9)
    assert (upload.rows_imported, upload.rows_duplicate, upload.rows_failed) == (6, 0, 3)
    assert counted_events(api_meter) == 4
    assert counted_events(count_meter) == 2
    assert rollup_total(api_meter) == (Decimal("11.0"), 4)
    assert upload.meter_total_values()[api_meter.pk] == (4, Decimal("11.0"))
    assert upload.meter_total_values()[count_meter.pk][0] == 2
    rejections = {
        r.line: (r.code, r.column) for r in EventRejection.objects.filter(batch=upload.batch)
    }
    assert rejections == {
        5: ("timestamp_invalid", "timestamp"),
        6: ("meter_event_customer_not_found", "payload_stripe_customer_id"),
        9: ("meter_event_invalid_value", "payload_value"),
    }
    assert set(MeterEvent.objects.filter(batch=upload.batch).values_list("line", flat=True)) == {
        2,
        3,
        4,
        7,
        8,
        10,
    }
    assert AuditEntry.objects.filter(
        target_type="uploads.upload", target_id=str(upload.pk), action="upload"
    ).exists()

    page = finance_client.get(upload.get_absolute_url()).content.decode()
    assert "Succeeded with errors" in page and "timestamp_invalid" in page
    # The page shows original values escaped, never as markup.
    assert "=HYPERLINK(&quot;http://evil&quot;)" in page

    # The same file again, as a corrected copy: nothing is counted twice; failed rows and
    # none imported is "Failed".
    again = wait_for(post_upload(finance_client, content, rows_without_identifier=COPY))
    assert (again.rows_imported, again.rows_duplicate, again.rows_failed) == (0, 6, 3)
    assert again.status == Upload.Status.FAILED
    assert counted_events(api_meter) == 4
    assert rollup_total(api_meter) == (Decimal("11.0"), 4)


def test_an_import_leaves_pandas_unloaded_in_the_worker(
    celery_worker, finance_client: Client, api_meter: Meter, count_meter: Meter, customers
) -> None:
    # pyarrow's ``pa.array`` and compute functions given Python values import pandas (about
    # 50 MB a worker would hold for nothing; the 5M-row import went over its memory budget).
    for rows_without_identifier in (COPY, Upload.RowsWithoutIdentifier.NEW_USAGE):
        upload = wait_for(
            post_upload(
                finance_client, mixed_file(), rows_without_identifier=rows_without_identifier
            )
        )
        assert upload.rows_read == 9 and upload.rows_failed == 3
    assert celery_worker.has_loaded("/pyarrow/")  # the check sees what a pool process loads
    assert not celery_worker.has_loaded("/pandas/")


def test_error_file_fixed_and_uploaded_again_imports_only_the_fixed_rows(
    celery_worker, finance_client: Client, api_meter: Meter, count_meter: Meter, customers
) -> None:
    upload = wait_for(post_upload(finance_client, mixed_file()))
    response = finance_client.get(f"/uploads/{upload.pk}/errors.csv")
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode("utf-8-sig")  # type: ignore[attr-defined]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "timestamp",
        "event_name",
        "payload_stripe_customer_id",
        "payload_value",
        "identifier",
        "line",
        "error_code",
        "error_message",
    ]
    assert [(row["line"], row["error_code"]) for row in rows] == [
        ("5", "timestamp_invalid"),
        ("6", "meter_event_customer_not_found"),
        ("9", "meter_event_invalid_value"),
    ]
    # Formula injection: neutralised in the file.
    assert rows[2]["payload_value"] == '\'=HYPERLINK("http://evil")'

    # Fix: a real date, the missing customer, a number. Everything else stays as downloaded.
    rows[0]["timestamp"] = day()
    Customer.objects.create(external_id="cus_404")
    rows[2]["payload_value"] = "-4"
    fixed = io.StringIO()
    writer = csv.DictWriter(fixed, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    second = wait_for(post_upload(finance_client, fixed.getvalue().encode(), name="fixed.csv"))

    assert (second.rows_imported, second.rows_duplicate, second.rows_failed) == (3, 0, 0)
    assert second.status == Upload.Status.SUCCEEDED
    assert rollup_total(api_meter) == (Decimal("11.0") + 1 + 3 - 4, 7)


def test_validate_only_writes_nothing_then_imports_the_same_file(
    celery_worker, finance_client: Client, api_meter: Meter, count_meter: Meter, customers
) -> None:
    check = wait_for(post_upload(finance_client, mixed_file(), validate_only=True))

    assert check.status == Upload.Status.VALIDATED
    assert (check.rows_imported, check.rows_failed) == (6, 3)
    assert check.meter_total_values()[api_meter.pk] == (4, Decimal("11.0"))
    assert MeterEvent.objects.count() == 0
    assert EventRejection.objects.filter(batch=check.batch).count() == 3
    page = finance_client.get(check.get_absolute_url()).content.decode()
    assert "Would import" in page and "Import this file" in page

    response = finance_client.post(f"/uploads/{check.pk}/import/")
    imported = wait_for(Upload.objects.get(validated_upload=check))
    assert response["Location"] == imported.get_absolute_url()
    assert imported.file.name == check.file.name
    assert (imported.rows_imported, imported.rows_failed) == (6, 3)
    assert counted_events(api_meter) == 4


def test_revert_cancels_every_event_and_updates_rollups(
    celery_worker,
    finance_client: Client,
    finance_user,
    api_meter: Meter,
    count_meter: Meter,
    customers,
) -> None:
    upload = wait_for(post_upload(finance_client, mixed_file()))
    assert rollup_total(api_meter)[1] == 4

    response = finance_client.post(f"/uploads/{upload.pk}/revert/", follow=True)
    assert "Revert started" in response.content.decode()

    upload = wait_for(upload, lambda upload: upload.reverted_at is not None)
    assert upload.events_reverted == 6
    assert counted_events(api_meter) == counted_events(count_meter) == 0
    assert rollup_total(api_meter) == (Decimal(0), 0)
    page = finance_client.get(upload.get_absolute_url()).content.decode()
    who = finance_user.get_full_name() or finance_user.username
    assert f"Reverted by <strong>{who}</strong>" in page
    assert AuditEntry.objects.filter(target_id=str(upload.pk), action="revert").exists()
    # Twice is refused.
    response = finance_client.post(f"/uploads/{upload.pk}/revert/", follow=True)
    assert "can be reverted" in response.content.decode()
    upload.refresh_from_db()
    assert upload.events_reverted == 6


def big_file(rows: int, customers: int = 3, d: str | None = None) -> bytes:
    """``rows`` rows on day ``d`` (yesterday by default), a second apart."""
    d = d or day()
    body = "".join(
        f"{d}T{(n // 3600) % 24:02d}:{(n // 60) % 60:02d}:{n % 60:02d}Z,api_calls,"
        f"cus_{n % customers + 1},{n % 7}\n"
        for n in range(rows)
    )
    return (HEADER + body).encode()


def test_cancel_a_queued_upload_and_a_running_one(
    celery_worker_factory, finance_client: Client, api_meter: Meter, customers
) -> None:
    queued = post_upload(finance_client, big_file(10))  # no worker yet: it waits
    finance_client.post(f"/uploads/{queued.pk}/cancel/")
    queued.refresh_from_db()
    assert queued.status == Upload.Status.CANCELLED

    celery_worker_factory(
        env={"USAGE_UPLOAD_CHUNK_ROWS": "200", "USAGE_UPLOAD_SQLITE_SPAN_SECONDS": "1"}
    )
    running = post_upload(finance_client, big_file(40_000))
    wait_for(running, lambda upload: upload.records_committed > 0)
    finance_client.post(f"/uploads/{running.pk}/cancel/")
    running = wait_for(running)

    assert running.status == Upload.Status.CANCELLED
    assert 0 < running.rows_read < 40_000
    assert counted_events(api_meter) == running.rows_imported == running.records_committed
    queued.refresh_from_db()
    assert queued.rows_read == 0  # the worker never touched the cancelled one
    assert AuditEntry.objects.filter(target_id=str(running.pk), action="cancel").exists()


def test_chunks_written_at_once_keep_the_files_order_for_last(
    celery_worker_factory, finance_client: Client, customers
) -> None:
    """Chunks commit on several connections at once (two writers on PostgreSQL), yet among
    rows with the same timestamp the one further down the file is the "last" one, even when
    a later chunk is quicker to check than the one before it."""
    gauge = MeterFactory.create(
        event_name="seats", display_name="Seats", aggregation_formula=Meter.Formula.LAST
    )
    celery_worker_factory(env={"USAGE_UPLOAD_CHUNK_ROWS": "500"})
    moment = f"{day()}T12:30:00Z"
    rows = []
    for number in range(1, 6001):
        # Every other chunk has identifiers the core checks one by one (a backslash): slow.
        identifier = f"seat\\{number}" if (number - 1) // 500 % 2 == 0 else ""
        rows.append(f"{moment},seats,cus_1,{number},{identifier}\n")
    content = HEADER.rstrip("\n") + ",identifier\n" + "".join(rows)
    upload = wait_for(post_upload(finance_client, content.encode()))

    assert upload.status == Upload.Status.SUCCEEDED
    assert (upload.rows_imported, upload.records_committed) == (6000, 6000)
    assert upload.committed_ranges == [[0, 6000]]
    events = MeterEvent.objects.filter(batch=upload.batch).order_by("id")
    assert list(events.values_list("line", flat=True)) == list(range(2, 6002))
    rollup = UsageRollup.objects.get(meter=gauge)
    assert (rollup.event_count, rollup.last_value) == (6000, Decimal("6000"))


def test_a_file_too_large_for_the_counters_memory_counts_identical_rows_on_disk(
    celery_worker_factory, finance_client: Client, api_meter: Meter, customers
) -> None:
    """Above USAGE_UPLOAD_COUNTER_MEMORY_ROWS rows, identical rows are counted on disk in an
    extra pass: the same identifiers, so a second upload of the file is all duplicates."""
    celery_worker_factory(
        env={"USAGE_UPLOAD_COUNTER_MEMORY_ROWS": "10", "USAGE_UPLOAD_CHUNK_ROWS": "7"}
    )
    rows = [f"{day()},api_calls,cus_{n % 3 + 1},{n % 4}\n" for n in range(60)]  # repeats
    content = (HEADER + "".join(rows)).encode()
    first = wait_for(post_upload(finance_client, content, rows_without_identifier=COPY))
    again = wait_for(post_upload(finance_client, content, rows_without_identifier=COPY))

    assert (first.status, first.rows_imported, first.rows_duplicate) == ("succeeded", 60, 0)
    assert (again.status, again.rows_imported, again.rows_duplicate) == ("nothing_new", 0, 60)
    # Each duplicate is listed once, with the upload its twin came in (writer threads commit
    # the chunks, in no set order).
    response = finance_client.get(f"/uploads/{again.pk}/duplicates.csv")
    text = b"".join(response.streaming_content).decode("utf-8-sig")  # type: ignore[attr-defined]
    listed = list(csv.DictReader(io.StringIO(text)))
    assert [int(row["line"]) for row in listed] == list(range(2, 62))
    assert {row["recorded_in_upload"].rsplit("/uploads/", 1)[1] for row in listed} == {
        f"{first.pk}/"
    }
    stored = set(MeterEvent.objects.filter(batch=first.batch).values_list("identifier", flat=True))
    in_memory = {row.event.identifier for row in parse_in_memory(content) if row.event}
    assert stored == in_memory and len(stored) == 60


def parse_in_memory(content: bytes) -> list:
    from uploads import reading, rows

    lines = reading.text_lines(io.BytesIO(content), max_bytes=10**6, max_line_bytes=10**6)
    record_iter = reading.records(lines, max_line_bytes=10**6)
    header = reading.header_read(record_iter)
    meters = {
        "api_calls": reading.MeterKeys(
            "api_calls", "API", "stripe_customer_id", "value", True, True
        )
    }
    builder = rows.RowBuilder(header, meters)
    return [row for chunk in reading.chunked(record_iter, 5) for row in builder.build(chunk)]
