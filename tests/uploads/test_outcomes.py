"""What an upload tells its user: rows without an identifier as new usage or a corrected
copy, statuses that tell the truth, and where each duplicate row was recorded. The pipeline
runs in the test process here (``test_pipeline`` covers the worker)."""

from __future__ import annotations

import csv
import io
import itertools
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from customers.models import Customer
from events.ingestion import manual_event_record, meter_event_cancel
from events.models import MeterEvent
from meters.models import Meter
from tests.factories import UserFactory
from tests.uploads.conftest import HEADER, counted_events, day, post_upload
from uploads.models import Upload, UploadDuplicates
from uploads.pipeline import upload_process
from usage_portal.roles import Role

pytestmark = pytest.mark.django_db

NEW, COPY = Upload.RowsWithoutIdentifier.NEW_USAGE, Upload.RowsWithoutIdentifier.CORRECTED_COPY
WITH_ID = "timestamp,event_name,payload_stripe_customer_id,payload_value,identifier\n"


def run(client: Client, content: str, **options: object) -> Upload:
    upload = post_upload(client, content.encode(), **options)  # type: ignore[arg-type]
    upload_process(upload_id=upload.pk)
    upload.refresh_from_db()
    return upload


def logins(rows: int, on: str) -> str:
    """``rows`` identical rows of the count meter: one customer, one day, no identifier."""
    return "timestamp,event_name,payload_stripe_customer_id\n" + f"{on},logins,cus_1\n" * rows


def duplicate_file(client: Client, upload: Upload) -> list[dict[str, str]]:
    response = client.get(f"/uploads/{upload.pk}/duplicates.csv")
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode("utf-8-sig")  # type: ignore[attr-defined]
    return list(csv.DictReader(io.StringIO(text)))


def test_identical_rows_as_new_usage_all_count_in_each_file(
    finance_client: Client, count_meter: Meter, customers: list[Customer]
) -> None:
    on = day()
    first = run(finance_client, logins(3, on))
    second = run(finance_client, logins(2, on))
    assert (first.rows_imported, second.rows_imported) == (3, 2)
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert counted_events(count_meter) == 5
    page = finance_client.get(second.get_absolute_url()).content.decode()
    assert "New usage: count every row" in page
    # Each row's identifier names the upload and its line: a re-run recomputes the same ones.
    identifiers = MeterEvent.objects.filter(batch=second.batch).values_list("identifier", flat=True)
    assert sorted(identifiers) == [f"csvrow_{second.pk}_2", f"csvrow_{second.pk}_3"]


def test_a_corrected_copy_of_a_file_uploaded_as_new_usage_counts_only_what_changed(
    finance_client: Client, api_meter: Meter, customers: list[Customer]
) -> None:
    """The common correction: a file went in as new usage (the default), one row was wrong,
    the fixed file goes in as a corrected copy; only the fixed row is new. Then the same
    rows once more as new usage count again."""
    on = day()
    rows = [f"{on},api_calls,cus_1,10", f"{on},api_calls,cus_1,10", f"{on},api_calls,cus_2,5"]
    header = "timestamp,event_name,payload_stripe_customer_id,payload_value\n"
    first = run(finance_client, header + "\n".join(rows) + "\n")
    assert first.rows_imported == 3
    fixed = [*rows[:2], f"{on},api_calls,cus_2,7"]
    copy = run(finance_client, header + "\n".join(fixed) + "\n", rows_without_identifier=COPY)
    assert (copy.rows_imported, copy.rows_duplicate) == (1, 2)
    assert [row["line"] for row in duplicate_file(finance_client, copy)] == ["2", "3"]
    again = run(finance_client, header + "\n".join(rows) + "\n")
    assert (again.rows_imported, again.rows_duplicate, again.status) == (3, 0, "succeeded")
    assert (
        sum(
            MeterEvent.objects.filter(meter=api_meter, cancelled_at__isnull=True).values_list(
                "value", flat=True
            )
        )
        == 10 + 10 + 5 + 7 + 10 + 10 + 5
    )


def test_a_corrected_copy_counts_only_rows_not_imported_before(
    finance_client: Client, count_meter: Meter, customers: list[Customer]
) -> None:
    on = day()
    run(finance_client, logins(3, on), rows_without_identifier=COPY)
    again = run(finance_client, logins(5, on), rows_without_identifier=COPY)
    assert (again.rows_imported, again.rows_duplicate) == (2, 3)
    assert counted_events(count_meter) == 5
    page = finance_client.get(again.get_absolute_url()).content.decode()
    assert "A corrected copy of an earlier file" in page


def test_the_form_asks_what_rows_without_an_identifier_are(finance_client: Client) -> None:
    page = finance_client.get("/uploads/new/").content.decode()
    assert "Rows without an identifier are" in page
    assert re.search(r'value="new_usage"[^>]*checked', page)  # the default
    assert not re.search(r'value="corrected_copy"[^>]*checked', page)
    assert "a corrected copy of an earlier file" in page


def test_every_row_a_duplicate_is_a_warning_that_says_where_each_was_recorded(
    finance_client: Client, finance_user: User, api_meter: Meter, customers: list[Customer]
) -> None:
    content = HEADER + f"{day()},api_calls,cus_1,5\n{day()},api_calls,cus_2,7\n"
    first = run(finance_client, content, name="march.csv", rows_without_identifier=COPY)
    again = run(finance_client, content, name="march-again.csv", rows_without_identifier=COPY)

    assert (again.status, again.rows_imported, again.rows_duplicate) == ("nothing_new", 0, 2)
    assert not again.is_revertible
    page = finance_client.get(again.get_absolute_url()).content.decode()
    assert "Nothing new: every row was already recorded" in page
    assert 'data-status="nothing_new"' in page and 'class="badge nothing_new"' in page
    assert "Duplicate rows 1\u20132" in page
    assert f'href="{first.get_absolute_url()}">upload {first.pk} (march.csv), ' in page
    assert f"by {finance_user.get_full_name() or finance_user.username}" in page
    listed = finance_client.get("/uploads/").content.decode()
    assert "Nothing new" in listed

    rows = duplicate_file(finance_client, again)
    assert [row["line"] for row in rows] == ["2", "3"]
    assert all(row["recorded"].startswith(f"upload {first.pk} (march.csv), ") for row in rows)
    assert all(row["recorded_in_upload"].endswith(first.get_absolute_url()) for row in rows)


def test_duplicates_name_the_earlier_row_an_api_batch_and_a_cancellation(
    finance_client: Client, finance_user: User, api_meter: Meter, customers: list[Customer]
) -> None:
    canceller = UserFactory.create(username="carla", first_name="Carla", role=Role.FINANCE)
    yesterday = timezone.now() - timedelta(days=1)
    when = yesterday.replace(microsecond=0)
    manual_event_record(
        user=finance_user,
        meter=api_meter,
        customer_ref="cus_1",
        value="4",
        timestamp=when,
        identifier="typed-1",
    )
    gone = manual_event_record(
        user=finance_user,
        meter=api_meter,
        customer_ref="cus_2",
        value="9",
        timestamp=when,
        identifier="typed-2",
    )
    assert gone.event is not None
    meter_event_cancel(event=gone.event, user=canceller)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    content = (
        WITH_ID
        + f"{stamp},api_calls,cus_3,1,file-1\n"
        + f"{stamp},api_calls,cus_3,1,file-1\n"
        + f"{stamp},api_calls,cus_1,4,typed-1\n"
        + f"{stamp},api_calls,cus_2,9,typed-2\n"
    )
    upload = run(finance_client, content)
    assert (upload.status, upload.rows_imported, upload.rows_duplicate) == ("succeeded", 1, 3)

    recorded = {row["line"]: row["recorded"] for row in duplicate_file(finance_client, upload)}
    assert recorded["3"] == "earlier in this file (line 2)"
    assert recorded["4"].startswith("Manual entry batch ") and recorded["4"].endswith(
        f"UTC, by {finance_user.get_full_name() or finance_user.username}"
    )
    assert "; cancelled on " in recorded["5"] and recorded["5"].endswith("by Carla")
    page = finance_client.get(upload.get_absolute_url()).content.decode()
    assert "earlier in this file (line 2)" in page


def test_duplicates_page_through_many_chunks(
    finance_client: Client, api_meter: Meter, customers: list[Customer], settings
) -> None:
    settings.USAGE_UPLOAD_CHUNK_ROWS = 7
    content = HEADER + "".join(f"{day()},api_calls,cus_1,{n}\n" for n in range(60))
    run(finance_client, content, rows_without_identifier=COPY)
    again = run(finance_client, content, rows_without_identifier=COPY)
    assert again.rows_duplicate == 60
    second_page = finance_client.get(again.get_absolute_url(), {"duplicates_page": 2})
    body = second_page.content.decode()
    assert "Duplicate rows 51\u201360" in body
    lines = [row["line"] for row in duplicate_file(finance_client, again)]
    assert lines == [str(line) for line in range(2, 62)]


def test_no_row_imported_and_rows_failed_is_failed(
    finance_client: Client, api_meter: Meter, customers: list[Customer]
) -> None:
    upload = run(finance_client, HEADER + f"{day()},api_calls,cus_404,1\nbad,api_calls,cus_1,1\n")
    assert (upload.status, upload.rows_imported, upload.rows_failed) == ("failed", 0, 2)
    assert "No row was imported: 2 rows failed" in upload.failed_reason
    page = finance_client.get(upload.get_absolute_url()).content.decode()
    assert 'data-status="failed"' in page and "meter_event_customer_not_found" in page


def test_a_validate_only_run_is_validated_and_its_import_keeps_the_answer(
    finance_client: Client, count_meter: Meter, customers: list[Customer]
) -> None:
    on = day()
    run(finance_client, logins(2, on), rows_without_identifier=COPY)
    check = run(finance_client, logins(3, on), validate_only=True, rows_without_identifier=COPY)
    assert (check.status, check.rows_imported, check.rows_duplicate) == ("validated", 1, 2)
    page = finance_client.get(check.get_absolute_url()).content.decode()
    assert 'data-status="validated"' in page and "Import this file" in page
    assert "Succeeded" not in page

    finance_client.post(f"/uploads/{check.pk}/import/")
    imported = Upload.objects.get(validated_upload=check)
    assert imported.rows_without_identifier == COPY
    upload_process(upload_id=imported.pk)
    imported.refresh_from_db()
    assert (imported.status, imported.rows_imported, imported.rows_duplicate) == (
        "succeeded",
        1,
        2,
    )
    assert counted_events(count_meter) == 3

    # Back on the validated run: it says where its rows went, and a second import is refused
    # (it would count them twice) until that import is reverted.
    page = finance_client.get(check.get_absolute_url()).content.decode()
    assert "Import this file" not in page and f"upload {imported.pk}" in page
    response = finance_client.post(f"/uploads/{check.pk}/import/", follow=True)
    assert "was imported already" in response.content.decode()
    assert Upload.objects.filter(validated_upload=check).count() == 1
    assert counted_events(count_meter) == 3


@given(
    data=st.lists(
        st.tuples(st.integers(1, 5), st.text(alphabet=st.characters(exclude_characters="\x00"))),
        min_size=1,
        max_size=40,
    )
)
def test_a_chunks_duplicates_are_kept_as_they_were(data: list[tuple[int, str]]) -> None:
    """Lines in runs, identifiers joined by newlines or, when one holds a newline, in JSON."""
    lines = list(itertools.accumulate(step for step, _ in data))
    identifiers = [identifier for _, identifier in data]
    kept = UploadDuplicates.of_chunk(upload_id=1, start=0, lines=lines, identifiers=identifiers)
    assert kept.entries() == list(zip(lines, identifiers, strict=True))
    assert kept.rows == len(lines)
