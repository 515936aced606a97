"""Issue §9: a killed worker, a broker that is down, uploads racing, and bad files."""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.test import Client
from django.utils import timezone

from events.models import EventRejection, MeterEvent
from meters.models import Meter
from tests.uploads.conftest import HEADER, counted_events, day, post_upload, rollup_total, wait_for
from tests.uploads.test_pipeline import big_file
from uploads.models import Upload
from uploads.services import upload_create, uploads_requeue_stale
from usage_portal.celery import app

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def stale_later() -> datetime:
    """A moment at which every job now running or queued counts as stale."""
    return timezone.now() + timedelta(
        seconds=max(
            settings.USAGE_UPLOAD_RUNNING_STALE_SECONDS, settings.USAGE_UPLOAD_QUEUED_STALE_SECONDS
        )
        + 1
    )


def test_worker_killed_mid_import_resumes_and_counts_every_row_once(
    celery_worker_factory, finance_client: Client, api_meter: Meter, customers
) -> None:
    rows = 60_000
    upload = post_upload(finance_client, big_file(rows))
    # SQLite: a commit every second, so the kill finds chunks committed and chunks not.
    first = celery_worker_factory(
        env={"USAGE_UPLOAD_CHUNK_ROWS": "500", "USAGE_UPLOAD_SQLITE_SPAN_SECONDS": "1"}
    )
    wait_for(upload, lambda u: u.records_committed >= 2000)
    first.kill()
    upload.refresh_from_db()
    assert upload.status == Upload.Status.IMPORTING
    assert upload.records_committed < rows, "the import ended before the kill; use more rows"

    celery_worker_factory(env={"USAGE_UPLOAD_CHUNK_ROWS": "700"})  # other chunks: still exact
    assert upload.pk in uploads_requeue_stale(now=stale_later())  # what celery beat runs
    upload = wait_for(upload)

    assert upload.status == Upload.Status.SUCCEEDED
    assert upload.attempts >= 2
    assert (upload.rows_read, upload.rows_imported, upload.rows_duplicate) == (rows, rows, 0)
    assert counted_events(api_meter) == rows
    expected_sum = sum(Decimal(n % 7) for n in range(rows))
    assert rollup_total(api_meter) == (expected_sum, rows)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def broker_down(tmp_path: Path) -> Iterator[None]:
    """Point this process's Celery app at a broker that is not there."""
    conf = app.conf
    saved_url, saved_options = conf.broker_url, dict(conf.broker_transport_options or {})
    saved_env = os.environ.get("CELERY_BROKER_URL")
    if saved_url.startswith("redis"):
        dead = f"redis://127.0.0.1:{_free_port()}/0"
        conf.broker_url = dead
        os.environ["CELERY_BROKER_URL"] = dead  # Celery reads the variable before its conf
    else:
        missing = str(tmp_path / "no-broker-here" / "queue")
        conf.broker_transport_options = {
            **saved_options,
            "data_folder_in": missing,
            "data_folder_out": missing,
            "control_folder": missing,
        }
    try:
        yield
    finally:
        if saved_env is not None:
            os.environ["CELERY_BROKER_URL"] = saved_env
        conf.broker_url = saved_url
        conf.broker_transport_options = saved_options


def test_broker_down_while_uploading_keeps_the_file_and_runs_later(
    celery_worker, finance_client: Client, api_meter: Meter, customers, tmp_path: Path
) -> None:
    with broker_down(tmp_path):
        upload = post_upload(finance_client, big_file(50))
        upload.refresh_from_db()
        assert upload.status == Upload.Status.QUEUED
        assert upload.file.name and upload.file.storage.exists(upload.file.name)
        page = finance_client.get(upload.get_absolute_url()).content.decode()
        assert 'data-status="queued"' in page
        assert uploads_requeue_stale(now=stale_later()) == []  # still down: nothing sent
    upload.refresh_from_db()
    assert upload.status == Upload.Status.QUEUED and upload.attempts == 0

    assert uploads_requeue_stale(now=stale_later()) == [upload.pk]
    upload = wait_for(upload)
    assert upload.status == Upload.Status.SUCCEEDED
    assert counted_events(api_meter) == 50


def test_requeue_runs_on_celery_beat() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["uploads-requeue-stale"]
    app.loader.import_default_modules()
    assert entry["task"] in app.tasks


def test_two_uploads_at_once_and_the_same_file_twice_at_once(
    celery_worker_factory, finance_client: Client, api_meter: Meter, customers
) -> None:
    for _ in range(2):
        celery_worker_factory(env={"USAGE_UPLOAD_CHUNK_ROWS": "300"})
    # Different files touching the same customers and hours: the same rollup rows. One day
    # for all four files, even if the real date changes while they are built.
    d = day()
    other = HEADER.replace("\n", ",identifier\n") + "".join(
        f"{d}T{n % 24:02d}:30:00Z,api_calls,cus_{n % 3 + 1},2,other-{n}\n" for n in range(3000)
    )
    same = big_file(2000, customers=2, d=d)
    copy = Upload.RowsWithoutIdentifier.CORRECTED_COPY  # identical rows are the same events
    first = post_upload(finance_client, big_file(3000, d=d), rows_without_identifier=copy)
    second = post_upload(finance_client, other.encode())
    same_a = post_upload(finance_client, same, name="same.csv", rows_without_identifier=copy)
    same_b = post_upload(finance_client, same, name="same.csv", rows_without_identifier=copy)
    uploads = [wait_for(upload) for upload in (first, second, same_a, same_b)]

    assert [u.status for u in uploads] == [
        Upload.Status.SUCCEEDED if u.rows_imported else Upload.Status.NOTHING_NEW for u in uploads
    ]
    # big_file(2000, customers=2) rows differ from big_file(3000) rows only in customer: the
    # `overlap` rows they share count once, in whichever of the three uploads commits them
    # first (two workers run them at once, in no set order); the other file has identifiers.
    overlap = sum(1 for n in range(2000) if n % 3 == n % 2)
    assert uploads[1].rows_imported == 3000
    imported = uploads[0].rows_imported + uploads[2].rows_imported + uploads[3].rows_imported
    assert imported == 3000 + 2000 - overlap
    assert sum(upload.rows_duplicate for upload in uploads) == 2000 + overlap
    total_rows = 3000 + 3000 + 2000 - overlap
    assert counted_events(api_meter) == total_rows
    assert MeterEvent.objects.count() == total_rows
    expected = (
        sum(Decimal(n % 7) for n in range(3000))
        + Decimal(2 * 3000)
        + sum(Decimal(n % 7) for n in range(2000) if n % 3 != n % 2)
    )
    assert rollup_total(api_meter) == (expected, total_rows)


def _store(user: User, name: str, path: Path) -> Upload:
    with path.open("rb") as handle:
        uploaded = UploadedFile(handle, name=name, size=path.stat().st_size)
        return upload_create(file=uploaded, user=user)


def test_bad_files_each_end_clearly_and_lose_nothing_valid(
    celery_worker, finance_user, api_meter: Meter, customers, tmp_path: Path, settings
) -> None:
    d = day()
    good = f"{d},api_calls,cus_1,1\n"
    files: dict[str, bytes] = {
        "binary.csv": HEADER.encode() + bytes(range(256)) * 4,
        "latin1.csv": (HEADER + good + f"{d},api_calls,cus_1,1,café\n").encode("latin-1"),
        "no-header.csv": (good * 3).encode(),
        "header-only.csv": HEADER.encode(),
        "empty.csv": b"",
        "extra-columns.csv": (
            "timestamp,event_name,payload_stripe_customer_id,payload_value,payload_region,notes\n"
            f"{d},api_calls,cus_2,3,eu,ignored\n"
        ).encode(),
        "quoted-newlines.csv": (
            HEADER + f'{d},api_calls,"cus_3",4\n' + f'{d},"api\ncalls",cus_3,4\n'
        ).encode(),
        "ragged.csv": (
            HEADER + f"{d},api_calls,cus_1\n{d},api_calls,cus_1,5\n{d},api_calls,cus_1,5,6\n"
        ).encode(),
        "gzipped.csv.gz": gzip.compress((HEADER + f"{d},api_calls,cus_2,6\n").encode()),
    }
    huge = tmp_path / "huge-line.csv"
    with huge.open("wb") as out:
        out.write((HEADER + f"{d},api_calls,cus_1,7\n").encode())
        out.write(f"{d},api_calls,cus_1,".encode())
        block = b"9" * (1024 * 1024)
        for _ in range(100):
            out.write(block)
        out.write(f"\n{d},api_calls,cus_2,8\n".encode())
    paths = {"huge-line.csv": huge}
    for name, content in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(content)
    uploads = {name: _store(finance_user, name, path) for name, path in paths.items()}
    settings.USAGE_UPLOAD_MAX_BYTES = 1000
    uploads["too-big.csv"] = _store(finance_user, "too-big.csv", paths["huge-line.csv"])
    done = {name: wait_for(upload) for name, upload in uploads.items()}

    def outcome(name: str) -> tuple[str, int, int]:
        upload = done[name]
        return upload.status, upload.rows_imported, upload.rows_failed

    failed = Upload.Status.FAILED
    assert "not a CSV file" in done["binary.csv"].failed_reason
    assert "not UTF-8" in done["latin1.csv"].failed_reason
    assert "line 3" in done["latin1.csv"].failed_reason
    assert "Required columns missing: timestamp, event_name" in done["no-header.csv"].failed_reason
    assert "no data rows" in done["header-only.csv"].failed_reason
    assert "empty" in done["empty.csv"].failed_reason
    assert "larger than the limit" in done["too-big.csv"].failed_reason
    assert not done["too-big.csv"].file  # not stored
    for name in ("binary.csv", "latin1.csv", "no-header.csv", "header-only.csv", "empty.csv"):
        assert outcome(name) == (failed, 0, 0), name
    assert outcome("extra-columns.csv") == (Upload.Status.SUCCEEDED, 1, 0)
    assert outcome("quoted-newlines.csv") == (Upload.Status.SUCCEEDED_WITH_ERRORS, 1, 1)
    assert outcome("ragged.csv") == (Upload.Status.SUCCEEDED_WITH_ERRORS, 1, 2)
    assert outcome("gzipped.csv.gz") == (Upload.Status.SUCCEEDED, 1, 0)
    assert outcome("huge-line.csv") == (Upload.Status.SUCCEEDED_WITH_ERRORS, 2, 1)
    huge_rejection = EventRejection.objects.get(batch=done["huge-line.csv"].batch)
    assert (huge_rejection.code, huge_rejection.line) == ("line_too_long", 3)
    region = MeterEvent.objects.get(batch=done["extra-columns.csv"].batch)
    assert region.payload.get("region") == "eu" and "notes" not in region.payload
    quoted = EventRejection.objects.get(batch=done["quoted-newlines.csv"].batch)
    assert (quoted.code, quoted.line, quoted.raw["event_name"]) == ("no_meter", 3, "api\ncalls")
