"""S3 import against a real S3-protocol server (moto's server mode, its own process) and a
real Celery worker: connectors, polling, each object version imported once, error files
written back, bad files, and the store failing (unreachable, a broken download, credentials
that stop working, an object replaced before its download)."""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from meters.models import Meter
from tests.uploads.conftest import HEADER, counted_events, day, rollup_total
from tests.uploads.s3_support import FaultProxy, MotoServer, moto_running
from uploads import connectors
from uploads.connectors import ConnectorFields, connector_create, connector_sync
from uploads.models import S3Connector, S3Object, Upload
from usage_portal.crypto import secret_decrypt

WORKER_ENV = {"USAGE_OUTBOUND_ALLOWED_HOSTS": "127.0.0.1"}


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with moto_running() as server:
        yield server


@pytest.fixture
def allow_local(settings: Any, db: None) -> None:
    settings.USAGE_OUTBOUND_ALLOWED_HOSTS = "127.0.0.1"


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    name = f"usage-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


def make_connector(
    url: str, bucket: str, *, prefix: str = "usage/", key: str = "testing", secret: str = "testing"
) -> S3Connector:
    return connector_create(
        fields=ConnectorFields(
            name=f"exports-{uuid.uuid4().hex[:6]}",
            bucket=bucket,
            prefix=prefix,
            region="us-east-1",
            endpoint_url=url,
            access_key_id=key,
        ),
        secret_access_key=secret,
        actor=None,
    )


def put(moto: MotoServer, bucket: str, key: str, body: bytes) -> str:
    return str(moto.client().put_object(Bucket=bucket, Key=key, Body=body)["ETag"]).strip('"')


def csv_rows(rows: list[tuple[str, str]], *, when: str | None = None) -> bytes:
    when = when or day(1)
    return (HEADER + "".join(f"{when},api_calls,{c},{v}\n" for c, v in rows)).encode()


def jsonl_rows(rows: list[tuple[str, str]], *, start: int = 0) -> bytes:
    stamp = int(time.time()) - 3600
    return "".join(
        json.dumps(
            {
                "event_name": "api_calls",
                "timestamp": stamp,
                "identifier": f"jsonl-{start + n}",
                "payload": {"stripe_customer_id": c, "value": v},
            }
        )
        + "\n"
        for n, (c, v) in enumerate(rows)
    ).encode()


def files_settled(connector: S3Connector, expected: int, *, timeout: float = 120) -> list[S3Object]:
    """Wait until the connector has ``expected`` files, none waiting or importing."""
    deadline = time.monotonic() + timeout
    while True:
        files = list(S3Object.objects.filter(connector=connector).select_related("upload"))
        waiting = [
            found
            for found in files
            if found.state == S3Object.State.FOUND
            or (found.upload is not None and not found.upload.is_finished)
        ]
        if len(files) == expected and not waiting:
            return sorted(files, key=lambda found: found.key)
        if time.monotonic() > deadline:
            pytest.fail(
                "S3 files did not settle: "
                + "; ".join(f"{f.key} {f.state} {f.status} {f.problem!r}" for f in files)
            )
        time.sleep(0.3)


# --- Connectors -------------------------------------------------------------------------------
def test_an_admin_adds_a_connector_whose_secret_is_encrypted_and_never_shown(
    admin_client_role: Client, allow_local: None, moto: MotoServer, bucket: str
) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    response = admin_client_role.post(
        "/uploads/s3/new/",
        {
            "name": "exports",
            "bucket": bucket,
            "key_prefix": "usage/",
            "region": "us-east-1",
            "endpoint_url": moto.url,
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": secret,
        },
    )
    assert response.status_code == 302, response.content[:2000]
    connector = S3Connector.objects.get(name="exports")
    assert secret not in connector.secret_encrypted
    assert secret_decrypt(connector.secret_encrypted) == secret
    assert connector.user.username == "s3:exports"
    for page in (connector.get_absolute_url(), f"/uploads/s3/{connector.pk}/edit/"):
        html = admin_client_role.get(page).content.decode()
        assert "AKIAEXAMPLE" in html and secret not in html
    # An empty secret on the edit form keeps the stored one; a new one replaces it.
    edit = {
        "name": "exports",
        "bucket": bucket,
        "key_prefix": "usage/",
        "region": "us-east-1",
        "endpoint_url": moto.url,
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": "",
    }
    assert admin_client_role.post(f"/uploads/s3/{connector.pk}/edit/", edit).status_code == 302
    connector.refresh_from_db()
    assert secret_decrypt(connector.secret_encrypted) == secret
    edit["secret_access_key"] = "replaced-secret"
    admin_client_role.post(f"/uploads/s3/{connector.pk}/edit/", edit)
    connector.refresh_from_db()
    assert secret_decrypt(connector.secret_encrypted) == "replaced-secret"


def test_the_form_refuses_bad_fields_and_internal_endpoints(admin_client_role: Client) -> None:
    response = admin_client_role.post(
        "/uploads/s3/new/",
        {
            "name": "metadata",
            "bucket": "Bad_Bucket",
            "key_prefix": "/usage",
            "region": "us-east-1",
            "endpoint_url": "http://169.254.169.254/",
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "",
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "3 to 63 lower-case letters" in html
    assert "without a leading slash" in html
    assert "internal address (169.254.169.254)" in html
    assert "USAGE_OUTBOUND_ALLOWED_HOSTS" in html
    assert "Enter the secret access key" in html
    assert not S3Connector.objects.exists()


def test_test_connection_lists_objects_or_says_what_is_wrong(
    admin_client_role: Client, allow_local: None, moto: MotoServer, bucket: str
) -> None:
    put(moto, bucket, "usage/a.csv", csv_rows([("cus_1", "1")]))
    connector = make_connector(moto.url, bucket)
    response = admin_client_role.post(f"/uploads/s3/{connector.pk}/test/", HTTP_HX_REQUEST="true")
    assert "Connection works" in response.content.decode()
    assert "usage/a.csv" in response.content.decode()

    missing = make_connector(moto.url, "no-such-bucket-here")
    html = admin_client_role.post(
        f"/uploads/s3/{missing.pk}/test/", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert "There is no bucket “no-such-bucket-here”" in html

    closed = make_connector(f"http://127.0.0.1:{_closed_port()}", bucket)
    html = admin_client_role.post(
        f"/uploads/s3/{closed.pk}/test/", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert "cannot be reached" in html and "Traceback" not in html


def _closed_port() -> int:
    from tests.uploads.s3_support import free_port

    return free_port()  # nothing listens on it


@pytest.fixture
def auth_moto() -> Iterator[tuple[MotoServer, dict[str, str]]]:
    """A store that checks credentials (moto's IAM authentication): the first actions are
    free, and make a user with full S3 access and its key."""
    with moto_running({"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as server:
        iam = server.client("iam")
        iam.create_user(UserName="importer")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="importer", PolicyName="all", PolicyDocument=json.dumps(policy)
        )
        key = iam.create_access_key(UserName="importer")["AccessKey"]
        credentials = {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        server.client(**credentials).create_bucket(Bucket="guarded")
        yield server, credentials


def test_credentials_that_stop_working_stop_polling_until_fixed(
    allow_local: None, auth_moto: tuple[MotoServer, dict[str, str]]
) -> None:
    server, credentials = auth_moto
    connector = make_connector(
        server.url, "guarded", key=credentials["key"], secret=credentials["secret"]
    )
    assert connectors.connector_test(connector=connector).problem == ""

    wrong_secret = make_connector(server.url, "guarded", key=credentials["key"], secret="wrong")
    problem = connectors.connector_test(connector=wrong_secret).problem
    assert "secret access key is wrong" in problem

    server.client("iam", **credentials).delete_access_key(
        UserName="importer", AccessKeyId=credentials["key"]
    )
    outcome = connector_sync(connector=connector)
    assert "does not accept the access key ID" in outcome.problem
    connector.refresh_from_db()
    assert connector.credentials_problem
    # The poll skips it from now on, rather than failing every five minutes.
    assert connector.pk not in connectors.connectors_poll()


# --- Importing --------------------------------------------------------------------------------
@pytest.mark.worker
def test_files_of_each_format_import_once_however_often_listed(
    allow_local: None,
    moto: MotoServer,
    bucket: str,
    api_meter: Meter,
    customers: list[Any],
    celery_worker_factory: Callable[..., Any],
) -> None:
    put(moto, bucket, "usage/day1.csv", csv_rows([("cus_1", "1.5"), ("cus_2", "2")]))
    put(moto, bucket, "usage/day2.jsonl.gz", gzip.compress(jsonl_rows([("cus_1", "0.25")] * 4)))
    array = json.loads("[" + jsonl_rows([("cus_3", "10")], start=100).decode().strip() + "]")
    put(moto, bucket, "usage/day3.json", json.dumps(array).encode())
    put(moto, bucket, "elsewhere/ignored.csv", csv_rows([("cus_1", "1000")]))
    connector = make_connector(moto.url, bucket)

    # Two pollers at once, then again: each version is one file.
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(connector_sync(connector=connector)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not any(outcome.problem for outcome in results)
    assert S3Object.objects.filter(connector=connector).count() == 3
    celery_worker_factory(env=WORKER_ENV)
    files = files_settled(connector, 3)
    assert connector_sync(connector=connector).new == 0
    assert [found.status for found in files] == ["Succeeded"] * 3
    assert [found.upload.file_format for found in files if found.upload] == [
        "csv",
        "jsonl",
        "json",
    ]
    assert rollup_total(api_meter) == (Decimal("14.5"), 7)
    assert counted_events(api_meter) == 7
    assert all(
        found.upload and found.upload.uploaded_by.username == connector.user.username
        for found in files
    )

    # The same key with new content is a new file; deleting an object deletes no usage.
    put(moto, bucket, "usage/day1.csv", csv_rows([("cus_1", "100")]))
    moto.client().delete_object(Bucket=bucket, Key="usage/day3.json")
    assert connector_sync(connector=connector).new == 1
    files_settled(connector, 4)
    assert rollup_total(api_meter) == (Decimal("114.5"), 8)


@pytest.mark.worker
def test_failed_rows_are_written_back_beside_the_file(
    allow_local: None,
    moto: MotoServer,
    bucket: str,
    api_meter: Meter,
    customers: list[Any],
    finance_client: Client,
    celery_worker_factory: Callable[..., Any],
) -> None:
    bad = csv_rows([("cus_1", "1"), ("cus_unknown", "2"), ("cus_2", "lots")])
    put(moto, bucket, "usage/2026/bad rows.csv", bad)
    connector = make_connector(moto.url, bucket)
    celery_worker_factory(env=WORKER_ENV)
    connector_sync(connector=connector)
    (found,) = files_settled(connector, 1)
    assert found.status == "Succeeded with errors"
    assert found.upload is not None and found.upload.rows_failed == 2
    deadline = time.monotonic() + 60
    while not S3Object.objects.get(pk=found.pk).errors_written_at:
        assert time.monotonic() < deadline, S3Object.objects.get(pk=found.pk).errors_problem
        time.sleep(0.3)
    found.refresh_from_db()
    assert found.errors_key == "usage/errors/2026/bad rows.csv.errors.csv"
    body = moto.client().get_object(Bucket=bucket, Key=found.errors_key)["Body"].read()
    text = body.decode("utf-8-sig")
    assert "cus_unknown" in text and "lots" in text and "cus_1,1," not in text
    # The error files are never imported themselves.
    assert connector_sync(connector=connector).new == 0
    # The connector's page shows the file, its counts and links to its upload.
    html = finance_client.get(connector.get_absolute_url()).content.decode()
    assert found.upload.get_absolute_url() in html and found.errors_key in html
    assert "active: polled every 5 minutes" in html
    upload_page = finance_client.get(found.upload.get_absolute_url()).content.decode()
    assert f'found by connector <a href="{connector.get_absolute_url()}">' in upload_page
    # Its events say where they came from, as the event explorer shows them.
    from events.selectors import event_source

    label, url = event_source(found.upload.batch)
    assert (label, url) == (
        f"S3 import ({connector.name}) #{found.upload.pk}",
        found.upload.get_absolute_url(),
    )


@pytest.mark.worker
def test_bad_files_each_get_a_clear_outcome(
    allow_local: None,
    moto: MotoServer,
    bucket: str,
    api_meter: Meter,
    customers: list[Any],
    celery_worker_factory: Callable[..., Any],
) -> None:
    put(moto, bucket, "usage/object.json", b'{"event_name": "api_calls"}')
    lines = jsonl_rows([("cus_1", "1"), ("cus_2", "2")]).splitlines()
    put(moto, bucket, "usage/mixed.jsonl", b"\n".join([lines[0], b"[1, 2]", b"{oops", lines[1]]))
    put(moto, bucket, "usage/plain.csv.gz", csv_rows([("cus_3", "3")]))  # not gzip at all
    put(moto, bucket, "usage/empty.csv", b"")
    put(moto, bucket, "usage/notes.txt", b"hello")
    put(moto, bucket, "usage/ünïcödé + space & more.csv", csv_rows([("cus_3", "4")]))
    connector = make_connector(moto.url, bucket)
    celery_worker_factory(env=WORKER_ENV)
    connector_sync(connector=connector)
    files = {found.key.removeprefix("usage/"): found for found in files_settled(connector, 6)}

    def upload(name: str) -> Upload:
        made = files[name].upload
        assert made is not None, files[name].problem
        return made

    assert files["object.json"].status == "Failed"
    assert "must hold one array of events" in upload("object.json").failed_reason
    mixed = upload("mixed.jsonl")
    assert (mixed.rows_imported, mixed.rows_failed) == (2, 2)
    codes = dict(mixed.batch.rejections.values_list("line", "code"))
    assert codes == {2: "not_an_object", 3: "malformed_json"}
    malformed = mixed.batch.rejections.get(line=3).message
    assert malformed.endswith("The line: {oops")  # so it can be fixed from the error file
    assert upload("plain.csv.gz").rows_imported == 1  # read by its content
    assert files["empty.csv"].state == S3Object.State.FAILED
    assert "empty (0 bytes)" in files["empty.csv"].problem
    assert "does not end in .csv" in files["notes.txt"].problem
    assert upload("ünïcödé + space & more.csv").rows_imported == 1
    assert rollup_total(api_meter) == (Decimal("10"), 4)


# --- The store failing ------------------------------------------------------------------------
@pytest.mark.worker
def test_an_unreachable_store_and_a_broken_download_lose_and_double_nothing(
    allow_local: None,
    moto: MotoServer,
    bucket: str,
    api_meter: Meter,
    customers: list[Any],
    celery_worker_factory: Callable[..., Any],
) -> None:
    rows = [(f"cus_{1 + n % 3}", "1") for n in range(5000)]
    put(moto, bucket, "usage/big.csv", csv_rows(rows))
    proxy = FaultProxy(moto.port, cut_after=20_000)
    try:
        connector = make_connector(proxy.url, bucket)
        proxy.refuse = True
        outcome = connector_sync(connector=connector)
        assert "cannot be reached" in outcome.problem
        connector.refresh_from_db()
        assert "cannot be reached" in connector.last_sync_problem
        assert not S3Object.objects.filter(connector=connector).exists()

        proxy.refuse = False
        proxy.cut_responses = 2  # the first two downloads break mid-file
        assert connector_sync(connector=connector).new == 1
        connector.refresh_from_db()
        assert connector.last_sync_problem == ""
        celery_worker_factory(env=WORKER_ENV)
        (found,) = files_settled(connector, 1, timeout=180)
        assert proxy.cuts_made == 2
        assert found.attempts == 3 and found.status == "Succeeded"
        assert rollup_total(api_meter) == (Decimal(5000), 5000)
    finally:
        proxy.close()


@pytest.mark.worker
def test_a_worker_killed_mid_download_leaves_the_file_to_the_next_poll(
    allow_local: None,
    moto: MotoServer,
    bucket: str,
    api_meter: Meter,
    customers: list[Any],
    celery_worker_factory: Callable[..., Any],
) -> None:
    rows = [(f"cus_{1 + n % 3}", "2") for n in range(20_000)]
    put(moto, bucket, "usage/slow.csv", csv_rows(rows))
    proxy = FaultProxy(moto.port)
    try:
        connector = make_connector(proxy.url, bucket)
        proxy.delay = 0.3  # several seconds for the file
        worker = celery_worker_factory(env=WORKER_ENV)
        connector_sync(connector=connector)
        deadline = time.monotonic() + 60
        while not S3Object.objects.filter(connector=connector, attempts=1).exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1)  # mid-download
        worker.kill()
        found = S3Object.objects.get(connector=connector)
        assert found.state == S3Object.State.FOUND and found.upload is None
        proxy.delay = 0
        celery_worker_factory(env=WORKER_ENV)
        # The next poll, a few minutes on, sends the download again.
        with time_machine.travel(timezone.now() + connectors.DOWNLOAD_STALE * 2, tick=True):
            assert connector_sync(connector=connector).new == 0
        (found,) = files_settled(connector, 1)
        assert found.status == "Succeeded" and found.attempts == 2
        assert rollup_total(api_meter) == (Decimal(40_000), 20_000)
        assert Upload.objects.filter(s3_object__connector=connector).count() == 1
    finally:
        proxy.close()


@pytest.mark.worker
def test_an_object_replaced_before_its_download_is_imported_as_its_new_version(
    allow_local: None,
    moto: MotoServer,
    bucket: str,
    api_meter: Meter,
    customers: list[Any],
    celery_worker_factory: Callable[..., Any],
) -> None:
    put(moto, bucket, "usage/today.csv", csv_rows([("cus_1", "1")]))
    connector = make_connector(moto.url, bucket)
    connector_sync(connector=connector)  # listed, no worker yet to download it
    put(moto, bucket, "usage/today.csv", csv_rows([("cus_1", "7"), ("cus_2", "8")]))
    celery_worker_factory(env=WORKER_ENV)
    (first,) = files_settled(connector, 1)
    assert first.state == S3Object.State.FAILED and "replaced or deleted" in first.problem
    assert connector_sync(connector=connector).new == 1
    files_settled(connector, 2)
    assert rollup_total(api_meter) == (Decimal(15), 2)


def test_a_paused_connector_is_not_polled_and_resumes(
    admin_client_role: Client, allow_local: None, moto: MotoServer, bucket: str
) -> None:
    connector = make_connector(moto.url, bucket)
    admin_client_role.post(f"/uploads/s3/{connector.pk}/pause/", {"paused": "1"})
    connector.refresh_from_db()
    assert connector.is_paused and connector.pk not in connectors.connectors_poll()
    admin_client_role.post(f"/uploads/s3/{connector.pk}/pause/", {"paused": "0"})
    connector.refresh_from_db()
    assert not connector.is_paused and connector.pk in connectors.connectors_poll()


def test_manage_s3_sync_polls_a_connector(
    allow_local: None, moto: MotoServer, bucket: str, capsys: Any
) -> None:
    from django.core.management import CommandError, call_command

    put(moto, bucket, "usage/a.csv", csv_rows([("cus_1", "1")]))
    connector = make_connector(moto.url, bucket)
    call_command("s3_sync", "--connector", connector.name)
    assert "1 files listed, 1 new" in capsys.readouterr().out
    assert S3Object.objects.filter(connector=connector).count() == 1
    with pytest.raises(CommandError, match="No connector named"):
        call_command("s3_sync", "--connector", "nope")


@pytest.mark.worker
def test_a_validate_only_connector_records_nothing_until_a_file_is_imported(
    allow_local: None,
    moto: MotoServer,
    bucket: str,
    api_meter: Meter,
    customers: list[Any],
    finance_client: Client,
    celery_worker_factory: Callable[..., Any],
) -> None:
    put(moto, bucket, "usage/check.jsonl", jsonl_rows([("cus_1", "2"), ("cus_2", "3")]))
    connector = make_connector(moto.url, bucket)
    S3Connector.objects.filter(pk=connector.pk).update(validate_only=True)
    connector.refresh_from_db()
    celery_worker_factory(env=WORKER_ENV)
    connector_sync(connector=connector)
    (found,) = files_settled(connector, 1)
    assert found.status == "Validated" and found.upload is not None
    assert counted_events(api_meter) == 0
    # "Import" on the upload's page imports the checked file, as JSON lines still.
    response = finance_client.post(f"/uploads/{found.upload.pk}/import/")
    assert response.status_code == 302
    imported = Upload.objects.get(validated_upload=found.upload)
    deadline = time.monotonic() + 60
    while not imported.is_finished:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        imported.refresh_from_db()
    assert imported.status == Upload.Status.SUCCEEDED and imported.file_format == "jsonl"
    assert rollup_total(api_meter) == (Decimal(5), 2)


@pytest.mark.worker
def test_new_versions_of_a_file_count_again_unless_they_are_corrected_copies(
    allow_local: None,
    moto: MotoServer,
    bucket: str,
    api_meter: Meter,
    customers: list[Any],
    celery_worker_factory: Callable[..., Any],
) -> None:
    new_usage = make_connector(moto.url, bucket, prefix="new/")
    copies = make_connector(moto.url, bucket, prefix="copies/")
    S3Connector.objects.filter(pk=copies.pk).update(rows_without_identifier="corrected_copy")
    copies.refresh_from_db()
    celery_worker_factory(env=WORKER_ENV)
    # Different rows for each: a corrected copy's rows are compared with every row imported.
    for connector, prefix, customer, extra in (
        (new_usage, "new/", "cus_1", "5"),
        (copies, "copies/", "cus_3", "6"),
    ):
        first = csv_rows([(customer, "2"), (customer, "2")])
        second = csv_rows([(customer, "2"), (customer, "2"), ("cus_2", extra)])
        put(moto, bucket, f"{prefix}day.csv", first)
        connector_sync(connector=connector)
        files_settled(connector, 1)
        put(moto, bucket, f"{prefix}day.csv", second)  # a new version of the same file
        connector_sync(connector=connector)
        files_settled(connector, 2)
    # New usage: 2 rows, then all 3 again; corrected copies: 2, then only the row not seen.
    assert rollup_total(api_meter) == (Decimal(4 + 9 + 4 + 6), 2 + 3 + 2 + 1)
