"""A revert never blocks a re-upload: for any file F and any edit F' of it, uploading F,
reverting it and uploading F' leaves the same usage as uploading F' alone.

The pipeline runs in the test process (as in ``test_views``), inside a savepoint per
scenario that is rolled back, so each example starts from the same empty database.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Sum
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from customers.models import Customer
from events.ingestion import meter_event_cancel
from events.models import MeterEvent, StoredIdentifierSet, UsageRollup
from meters.models import Meter
from tests.uploads.conftest import day, post_upload
from uploads.models import Upload
from uploads.pipeline import upload_process
from uploads.services import upload_revert, upload_revert_request

pytestmark = pytest.mark.django_db

NEW, COPY = Upload.RowsWithoutIdentifier.NEW_USAGE, Upload.RowsWithoutIdentifier.CORRECTED_COPY


@dataclass(frozen=True)
class Row:
    customer: int  # 1..3
    hour: int
    value: int
    identifier: str = ""


def csv_of(rows: list[Row], *, identifiers: bool, on: str) -> bytes:
    header = "timestamp,event_name,payload_stripe_customer_id,payload_value"
    lines = [header + (",identifier" if identifiers else "")]
    for row in rows:
        line = f"{on}T{row.hour:02d}:00:00Z,api_calls,cus_{row.customer},{row.value}"
        lines.append(line + (f",{row.identifier}" if identifiers else ""))
    return ("\n".join(lines) + "\n").encode()


rows_strategy = st.builds(
    Row,
    customer=st.integers(1, 3),
    hour=st.integers(0, 3),
    value=st.integers(0, 5),  # small ranges: identical rows are common
)


@st.composite
def file_and_edit(draw: st.DrawFn) -> tuple[list[Row], list[Row]]:
    """A file F (rows named id-0, id-1...) and an edit F' of it: each row kept, dropped,
    changed (a corrected value or customer, the same identifier) or duplicated, then rows
    added."""
    first = [
        Row(r.customer, r.hour, r.value, f"id-{n}")
        for n, r in enumerate(draw(st.lists(rows_strategy, min_size=1, max_size=8)))
    ]
    edited: list[Row] = []
    for row in first:
        edit = draw(st.sampled_from(["keep", "drop", "change", "duplicate"]))
        if edit == "keep":
            edited.append(row)
        elif edit == "change":
            other = draw(rows_strategy)
            edited.append(Row(other.customer, row.hour, other.value, row.identifier))
        elif edit == "duplicate":
            edited += [row, row]
    added = draw(st.lists(rows_strategy, max_size=4))
    edited += [Row(r.customer, r.hour, r.value, f"new-{n}") for n, r in enumerate(added)]
    order = draw(st.permutations(range(len(edited))))
    return first, [edited[n] for n in order]


def usage() -> dict[str, tuple[Decimal, int, Decimal, int]]:
    """Per customer: the counted events' (sum, count) and their rollups' (sum, count)."""
    events = (
        MeterEvent.objects.filter(cancelled_at__isnull=True)
        .values("customer__external_id")
        .annotate(total=Sum("value"), count=Count("id"))
    )
    counted = {row["customer__external_id"]: (row["total"], row["count"]) for row in events}
    rolled: dict[str, tuple[Decimal, int]] = {}
    for external_id, value_sum, count in UsageRollup.objects.values_list(
        "customer__external_id", "value_sum", "event_count"
    ):
        total, events_counted = rolled.get(external_id, (Decimal(0), 0))
        rolled[external_id] = (total + value_sum, events_counted + count)
    return {
        ref: (*counted.get(ref, (Decimal(0), 0)), *rolled.get(ref, (Decimal(0), 0)))
        for ref in set(counted) | {ref for ref, totals in rolled.items() if totals[1]}
    }


def imported(client: Client, content: bytes, mode: str) -> Upload:
    upload = post_upload(client, content, rows_without_identifier=mode)
    upload_process(upload_id=upload.pk)
    upload.refresh_from_db()
    return upload


def reverted(upload: Upload, user: User) -> None:
    upload_revert_request(upload=upload, user=user)
    assert upload_revert(upload_id=upload.pk) is not None


def scenario(steps) -> tuple[dict[str, tuple[Decimal, int, Decimal, int]], tuple[int, ...]]:
    """Run ``steps`` (returning the last upload) in a savepoint rolled back afterwards: the
    usage it left, and the last upload's counts."""
    with transaction.atomic():
        last = steps()
        outcome = usage(), (last.rows_imported, last.rows_duplicate, last.rows_failed)
        transaction.set_rollback(True)
    return outcome


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files=file_and_edit(), identifiers=st.booleans(), mode=st.sampled_from([NEW, COPY]))
def test_upload_revert_upload_again_counts_as_the_edit_alone(
    finance_client: Client,
    finance_user: User,
    api_meter: Meter,
    customers: list[Customer],
    files: tuple[list[Row], list[Row]],
    identifiers: bool,
    mode: str,
) -> None:
    on = day()
    first = csv_of(files[0], identifiers=identifiers, on=on)
    edit = csv_of(files[1], identifiers=identifiers, on=on)

    alone = scenario(lambda: imported(finance_client, edit, mode))

    def revert_then_edit() -> Upload:
        upload = imported(finance_client, first, mode)
        assert upload.rows_imported > 0
        reverted(upload, finance_user)
        assert not StoredIdentifierSet.objects.exists()
        return imported(finance_client, edit, mode)

    assert scenario(revert_then_edit) == alone


def test_the_same_file_after_a_revert_counts_again_and_pages_show_its_identifiers(
    finance_client: Client, finance_user: User, api_meter: Meter, customers: list[Customer]
) -> None:
    content = csv_of([Row(1, 1, 5, "inv-1"), Row(2, 2, 3, "inv-2")], identifiers=True, on=day())
    upload = imported(finance_client, content, COPY)
    reverted(upload, finance_user)
    again = imported(finance_client, content, COPY)
    assert (again.status, again.rows_imported, again.rows_duplicate) == ("succeeded", 2, 0)

    released = MeterEvent.objects.filter(batch=upload.batch).order_by("line")
    assert [event.shown_identifier for event in released] == ["inv-1", "inv-2"]
    assert all(len(event.identifier) == 101 for event in released)
    explorer = finance_client.get("/events/", {"identifier": "inv-1"}).content.decode()
    assert explorer.count("inv-1") >= 2  # the counted event and the one the revert cancelled


def test_an_event_cancelled_on_its_own_keeps_its_identifier(
    finance_client: Client, finance_user: User, api_meter: Meter, customers: list[Customer]
) -> None:
    content = csv_of([Row(1, 1, 5, "inv-1")], identifiers=True, on=day())
    upload = imported(finance_client, content, COPY)
    meter_event_cancel(event=MeterEvent.objects.get(batch=upload.batch), user=finance_user)
    again = imported(finance_client, content, COPY)
    # As on Stripe: sending a cancelled event again does not revive it.
    assert (again.status, again.rows_imported, again.rows_duplicate) == ("nothing_new", 0, 1)
