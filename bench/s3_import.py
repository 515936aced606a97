"""Benchmark S3 import: a bucket's CSV and JSON-lines files → ``succeeded``, through a real
Celery worker, next to a browser upload of the same rows.

PostgreSQL (the figure that counts)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/up_s3_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/5 USAGE_PORTAL_VAR_DIR=var/s3-bench \\
        .venv/bin/python bench/s3_import.py [--rows 1000000] [--no-gz]

1. Generates a file of ``--rows`` rows with ``bench/csv_import.py``'s generator (2,000
   customers, 5 meters, the last 30 days, an identifier column ``bench_0_<row>``), and a
   JSON-lines file of exactly the same events (same identifiers, timestamps, customers and
   values; ``{"event_name", "timestamp", "identifier", "payload"}`` a line), and its gzip.
2. Browser upload: the CSV through ``upload_create``, timed from queued to ``succeeded``.
3. S3 CSV, S3 JSONL, S3 JSONL.gz (``--no-gz`` skips it): each file put into a bucket of its
   own on a moto S3 server (``moto_server``, its own process), a connector made for it, and
   timed from calling ``connector_sync`` to its upload ``succeeded``: the listing, the
   download into the upload storage (the worker's ``uploads.s3_object_import``) and the
   import (``uploads.process``). The download part (sync → the upload exists) and the
   import part (queued → succeeded, the browser upload's clock) are shown apart.
   ``--rfc3339`` adds a run of a JSON-lines file whose timestamps are RFC 3339 text
   (``"2026-12-01T10:00:00Z"``, the same seconds) instead of Unix seconds.
4. The browser upload again (``--no-control`` skips it): how far the machine drifted.

Each run is a first import into an empty database (the usage tables emptied before it), by
a fresh worker (``celery -A usage_portal worker``, ``--concurrency`` 1; 2 embedded), started
and ready before the clock starts. Each run is checked: every row imported, none failed,
``succeeded``, and the hourly rollups' event counts adding up to the rows (their value total
the same in every run). The table shows rows/s beside the browser upload's, the phases
(validation: the first pass; write: the import pass) and the kernel's peak RSS (VmHWM) of
the worker's pool process and of moto's server. The ratio is to the browser upload's rate:
its two runs' rows over their seconds (the first run's alone with ``--no-control``), as
the machine drifts during a bench. The target: at least 50,000 rows/s on PostgreSQL, within
20% of the browser upload's rate (ratio ≥ 0.80).

``--embedded`` runs the same on SQLite and the filesystem broker in a new temporary var dir
(DATABASE_URL and CELERY_BROKER_URL ignored), as ``bench/csv_import.py --embedded`` does.

The worker and this process are allowed the moto server's address
(``USAGE_OUTBOUND_ALLOWED_HOSTS=127.0.0.1``). A PostgreSQL database must be a dedicated one
whose name contains "bench": the script TRUNCATES the usage tables.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# bench/ is this script's folder, first on sys.path; csv_import puts the project on it.
from csv_import import ROOT, _create_database, _descendants, _generate, _setup, _vm_hwm_mb

TARGET_RATE = 50_000
TARGET_RATIO = 0.8
LAYOUT = "identifier"  # the JSON lines carry the CSV's identifiers: the same events


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--embedded", action="store_true", help="SQLite, filesystem broker")
    parser.add_argument("--concurrency", type=int, default=None, help="worker processes")
    parser.add_argument(
        "--gz", action=argparse.BooleanOptionalAction, default=True, help="a .jsonl.gz run"
    )
    parser.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the browser upload again at the end",
    )
    parser.add_argument(
        "--rfc3339", action="store_true", help="a JSONL run with RFC 3339 timestamps"
    )
    args = parser.parse_args()
    args.concurrency = args.concurrency or (2 if args.embedded else 1)

    if args.embedded:
        for name in ("DATABASE_URL", "CELERY_BROKER_URL", "USAGE_PORTAL_SQLITE_NAME"):
            os.environ.pop(name, None)
        os.environ["USAGE_PORTAL_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-s3-embedded-")
    else:
        url = os.environ.get("DATABASE_URL", "")
        name = urlparse(url).path.lstrip("/")
        if not url.startswith("postgres") or "bench" not in name:
            sys.exit("Set DATABASE_URL to a dedicated PostgreSQL database named like *bench*.")
        _create_database(url, name)
    # The moto server is on 127.0.0.1: allowed here and in the worker (which inherits this).
    os.environ["USAGE_OUTBOUND_ALLOWED_HOSTS"] = "127.0.0.1"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usage_portal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    _run(args)


# --- Files ------------------------------------------------------------------------------------
def _jsonl_write(csv_path: Path, path: Path, *, rfc3339: bool = False) -> None:
    """The CSV's events as JSON lines: each row's identifier, timestamp (Unix seconds, or
    with ``rfc3339`` the same second as ``2026-12-01T10:00:00Z``), event name and payload
    (the customer, and the value under the meter's value key; an empty CSV cell is a key
    left out)."""
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    with csv_path.open() as source, tmp.open("w") as out:
        header = source.readline().rstrip("\n").split(",")
        payload_columns = [
            (index, name.removeprefix("payload_"))
            for index, name in enumerate(header)
            if name.startswith("payload_")
        ]
        ident, stamp, event = (header.index(n) for n in ("identifier", "timestamp", "event_name"))
        lines = []
        for line in source:
            cells = line.rstrip("\n").split(",")
            seconds = int(cells[stamp])
            event_json = {
                "event_name": cells[event],
                "timestamp": _rfc3339(seconds) if rfc3339 else seconds,
                "identifier": cells[ident],
                "payload": {key: cells[index] for index, key in payload_columns if cells[index]},
            }
            lines.append(json.dumps(event_json, separators=(",", ":")) + "\n")
            if len(lines) >= 100_000:
                out.writelines(lines)
                lines = []
        out.writelines(lines)
    tmp.rename(path)


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gzip_write(source: Path, path: Path) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    with source.open("rb") as plain, gzip.open(tmp, "wb", compresslevel=6) as packed:
        shutil.copyfileobj(plain, packed, 1 << 20)
    tmp.rename(path)


# --- Runs -------------------------------------------------------------------------------------
@dataclass
class Result:
    label: str
    rows: int
    seconds: float  # the run's clock: queued → done (browser), sync → done (S3)
    download_seconds: float | None  # S3: sync → the upload exists
    queued_seconds: float  # queued → done
    validation_seconds: float  # started → import pass begins
    write_seconds: float  # import pass begins → done
    imported: int
    failed: int
    rollup_events: int
    rollup_value: Decimal
    pool_rss_mb: float
    main_rss_mb: float
    moto_rss_mb: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def peak_rss_mb(self) -> tuple[float, float]:
        """The pool processes' peak RSS (the largest) and the main process's."""
        pool = max((_vm_hwm_mb(pid) for pid in _descendants(self.process.pid)), default=0.0)
        return pool, _vm_hwm_mb(self.process.pid)


@contextlib.contextmanager
def _worker(label: str, folder: Path, concurrency: int) -> Iterator[Worker]:
    """A fresh worker, ready (its log says so) before this yields; stopped after."""
    from usage_portal.celery import app

    # What earlier runs queued (the daily-rollup refreshes) is not this run's work.
    with contextlib.suppress(Exception):  # the filesystem broker cannot purge everything
        app.control.purge()
    log = folder / f"worker-s3-{label.replace(' ', '-').replace('.', '-')}.log"
    with log.open("wb") as out:
        command = [str(ROOT / ".venv/bin/celery"), "-A", "usage_portal", "worker"]
        command += [f"--concurrency={concurrency}", "--loglevel=INFO", "--without-gossip"]
        command += ["--without-mingle", "-n", f"bench-s3-{os.getpid()}@%h"]
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = Worker(process, log)
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"The worker did not start; see {log}")
            time.sleep(0.2)
        time.sleep(1)  # its pool process forked and waiting
        yield worker
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a warm shutdown that hangs (filesystem broker)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _empty() -> tuple[Any, list[str]]:
    """Empty the usage tables, so the next run is a first import (PostgreSQL: ``_setup``'s
    TRUNCATE ... CASCADE, which empties the S3 files' table too; SQLite: deleted here), and
    delete the uploads' stored files (a run stores one or two copies of its file). The
    bench user and the customers' references, as ``_setup`` gives them."""
    from django.db import connection, transaction

    from events.models import EventBatch, EventRejection, MeterEvent, StoredIdentifierSet
    from events.models import UsageRollup as Rollup
    from uploads.models import Upload

    for upload in Upload.objects.exclude(file=""):
        upload.file.storage.delete(upload.file.name or "")
    user, refs = _setup()
    if connection.vendor == "postgresql":
        return user, refs
    # The tables TRUNCATE names and every table that refers to them, as CASCADE would.
    pending: list[Any] = [Upload, EventRejection, Rollup, MeterEvent]
    pending += [EventBatch, StoredIdentifierSet]
    models: list[Any] = []
    while pending:
        model = pending.pop()
        if model in models:
            continue
        models.append(model)
        pending += [related.related_model for related in model._meta.related_objects]
    with transaction.atomic():  # SQLite's foreign keys are checked at the commit
        for model in models:
            model.objects.all()._raw_delete(using="default")
    return user, refs


def _rollup_totals() -> tuple[int, Decimal]:
    """The hourly rollups' event count and value total (SQLite keeps values as text)."""
    from django.db import connection
    from django.db.models import Sum

    from events.models import UsageRollup

    if connection.vendor == "postgresql":
        totals = UsageRollup.objects.aggregate(events=Sum("event_count"), value=Sum("value_sum"))
        return int(totals["events"] or 0), Decimal(totals["value"] or 0)
    events = 0
    value = Decimal(0)
    for count, value_sum in UsageRollup.objects.values_list("event_count", "value_sum"):
        events += count
        value += Decimal(value_sum)
    return events, value


def _waiting(worker: Worker, deadline: float, what: str) -> None:
    """Between two looks at the database: give up if the worker died or it takes too long
    (a task that failed for good leaves its file or upload waiting forever)."""
    if worker.process.poll() is not None:
        sys.exit(f"The worker died; see {worker.log}")
    if time.monotonic() > deadline:
        sys.exit(f"Gave up waiting for {what}; see {worker.log}")
    time.sleep(0.05)


def _deadline(rows: int) -> float:
    return time.monotonic() + max(600.0, rows / 1000)  # 1,000 rows/s at the very least


def _wait(upload_id: int, worker: Worker, deadline: float) -> Any:
    from uploads.models import Upload

    while True:
        upload = Upload.objects.get(pk=upload_id)
        if upload.is_finished:
            return upload
        _waiting(worker, deadline, f"upload {upload_id} ({upload.status})")


def _result(
    label: str, upload: Any, worker: Worker, moto_pid: int, *, began: datetime | None
) -> Result:
    from uploads.models import Upload

    pool_rss, main_rss = worker.peak_rss_mb()
    if upload.status != Upload.Status.SUCCEEDED or upload.rows_failed:
        sys.exit(f"{label}: {upload.status} ({upload.rows_failed} failed) {upload.failed_reason}")
    assert upload.queued_at and upload.started_at and upload.import_started_at
    assert upload.finished_at
    events, value = _rollup_totals()
    start = began or upload.queued_at
    return Result(
        label=label,
        rows=upload.rows_read,
        seconds=(upload.finished_at - start).total_seconds(),
        download_seconds=(upload.created - began).total_seconds() if began else None,
        queued_seconds=(upload.finished_at - upload.queued_at).total_seconds(),
        validation_seconds=(upload.import_started_at - upload.started_at).total_seconds(),
        write_seconds=(upload.finished_at - upload.import_started_at).total_seconds(),
        imported=upload.rows_imported,
        failed=upload.rows_failed,
        rollup_events=events,
        rollup_value=value,
        pool_rss_mb=pool_rss,
        main_rss_mb=main_rss,
        moto_rss_mb=_vm_hwm_mb(moto_pid),
    )


@dataclass
class Bench:
    rows: int
    folder: Path  # the files, the workers' logs
    concurrency: int
    moto: Any  # tests.uploads.s3_support.MotoServer
    moto_pid: int


def _browser(bench: Bench, path: Path, user: Any, label: str = "browser CSV") -> Result:
    """The CSV as a browser upload (``upload_create``, as bench/csv_import.py sends it)."""
    from django.core.files import File

    from uploads.services import upload_create

    with _worker(label, bench.folder, bench.concurrency) as worker:
        with path.open("rb") as handle:
            # New usage, as a connector's files are (the rows carry identifiers either way).
            upload = upload_create(file=File(handle, name=path.name), user=user)  # type: ignore[arg-type]
        upload = _wait(upload.pk, worker, _deadline(bench.rows))
        return _result(label, upload, worker, bench.moto_pid, began=None)


def _s3(bench: Bench, label: str, path: Path, number: int) -> Result:
    """``path`` put into a bucket of its own, a connector for it, then timed from the sync."""
    from boto3.s3.transfer import TransferConfig
    from django.utils import timezone

    from uploads.connectors import ConnectorFields, connector_create, connector_sync
    from uploads.models import S3Object

    bucket = f"bench-{number}-{path.suffix.lstrip('.')}"
    client = bench.moto.client()
    client.create_bucket(Bucket=bucket)
    key = "usage/events" + "".join(path.suffixes[-2:] if path.suffix == ".gz" else [path.suffix])
    # Multipart above 64 MB (in 64 MB parts): moto keeps each part, as S3 would.
    transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
    client.upload_file(str(path), bucket, key, Config=transfer)
    connector = connector_create(
        fields=ConnectorFields(
            name=f"bench-{os.getpid()}-{number}",
            bucket=bucket,
            prefix="usage/",
            region="us-east-1",
            endpoint_url=bench.moto.url,
            access_key_id="testing",
        ),
        secret_access_key="testing",
        actor=None,
    )
    with _worker(label, bench.folder, bench.concurrency) as worker:
        deadline = _deadline(bench.rows)
        began = timezone.now()
        outcome = connector_sync(connector=connector)
        if outcome.problem or outcome.new != 1:
            sys.exit(f"{label}: sync listed {outcome.listed}, new {outcome.new}: {outcome.problem}")
        while True:
            found = S3Object.objects.get(connector=connector)
            if found.state == S3Object.State.FAILED:
                sys.exit(f"{label}: the download failed: {found.problem}")
            if found.upload_id is not None:
                break
            _waiting(worker, deadline, f"the download ({found.state}, {found.problem!r})")
        if found.problem:
            print(f"{label}: {found.problem} (attempts {found.attempts})")
        upload = _wait(found.upload_id, worker, deadline)
        return _result(label, upload, worker, bench.moto_pid, began=began)


def _run(args: argparse.Namespace) -> None:
    from django.conf import settings
    from django.db import connection

    from tests.uploads.s3_support import MotoServer
    from uploads.limits import chunk_rows

    user, refs = _empty()
    folder = Path(settings.VAR_DIR) / "bench-files"
    if args.embedded:  # the files outlive the temporary var dir, for the next run
        folder = ROOT / "var" / "bench-files"
    folder.mkdir(parents=True, exist_ok=True)
    day = datetime.now(UTC).strftime("%Y%m%d")
    csv_path = folder / f"usage-{args.rows}-{LAYOUT}-{day}.csv"
    _generate(csv_path, args.rows, refs, layout=LAYOUT)
    jsonl_path = csv_path.with_suffix(".jsonl")
    _jsonl_write(csv_path, jsonl_path)
    files = [("S3 CSV", csv_path), ("S3 JSONL", jsonl_path)]
    if args.gz:
        gz_path = jsonl_path.with_suffix(".jsonl.gz")
        _gzip_write(jsonl_path, gz_path)
        files.append(("S3 JSONL.gz", gz_path))
    if args.rfc3339:
        rfc_path = folder / f"{csv_path.stem}-rfc3339.jsonl"
        _jsonl_write(csv_path, rfc_path, rfc3339=True)
        files.append(("S3 JSONL RFC 3339", rfc_path))
    for _, path in files:
        print(f"file: {path} ({path.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows)")
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    print(f"broker: {settings.CELERY_BROKER_URL}; worker --concurrency={args.concurrency}")
    moto = MotoServer()
    bench = Bench(args.rows, folder, args.concurrency, moto, moto._process.pid)
    print(f"moto: {moto.url} (pid {bench.moto_pid})")
    try:
        results = [_browser(bench, csv_path, user)]
        _print(results)
        for number, (label, path) in enumerate(files, start=1):
            _empty()
            results.append(_s3(bench, label, path, number))
            _print(results[-1:], results[0].rate)
        if args.control:  # the browser upload again: how much the machine drifted meanwhile
            _empty()
            results.append(_browser(bench, csv_path, user, "browser CSV again"))
            _print(results[-1:], results[0].rate)
    finally:
        moto.stop()
    per = "transaction" if connection.vendor == "postgresql" else "chunk"
    print(f"chunk: {chunk_rows():,} rows per {per}")
    _print(results, _browser_rate(results))
    _verdict(results, args.rows, postgres=connection.vendor == "postgresql")


def _browser_rate(results: list[Result]) -> float:
    """The browser upload's rate: all its runs' rows over all their seconds (with the
    control, the runs before and after the S3 ones, so the machine's drift evens out)."""
    runs = [r for r in results if r.label.startswith("browser")]
    return sum(r.rows for r in runs) / sum(r.seconds for r in runs)


def _print(results: list[Result], browser_rate: float | None = None) -> None:
    print(f"{'run':<20}{'rows':>11}{'seconds':>9}{'rows/s':>9}{'ratio':>7}"
          f"{'download s':>12}{'queued→done s':>15}{'validate s':>12}{'write s':>9}"
          f"{'rollup events':>15}{'pool RSS MB':>13}{'moto RSS MB':>13}")  # fmt: skip
    for r in results:
        ratio = f"{r.rate / browser_rate:>7.2f}" if browser_rate else f"{'':>7}"
        seconds = r.download_seconds
        download = f"{seconds:>12.1f}" if seconds is not None else f"{'—':>12}"
        phases = f"{r.queued_seconds:>15.1f}{r.validation_seconds:>12.1f}{r.write_seconds:>9.1f}"
        memory = f"{r.pool_rss_mb:>13.0f}{r.moto_rss_mb:>13.0f}"
        print(f"{r.label:<20}{r.rows:>11,}{r.seconds:>9.1f}{r.rate:>9,.0f}{ratio}{download}"
              f"{phases}{r.rollup_events:>15,}{memory}")  # fmt: skip


def _verdict(results: list[Result], rows: int, *, postgres: bool) -> None:
    first = results[0]
    problems = [
        f"{r.label}: {r.imported:,} imported, {r.rollup_events:,} in the rollups"
        for r in results
        if r.imported != rows or r.rollup_events != rows
    ]
    problems += [
        f"{r.label}: value total {r.rollup_value} ≠ {first.rollup_value}"
        for r in results
        if r.rollup_value != first.rollup_value
    ]
    print(f"check: {'; '.join(problems) if problems else 'every run imported every row'}"
          f" (value total {first.rollup_value})")  # fmt: skip
    browser_rate = _browser_rate(results)
    print(f"browser upload: {browser_rate:,.0f} rows/s (its runs' rows over their seconds)")
    if not postgres:
        return
    for r in results:
        if not r.label.startswith("S3"):
            continue
        ratio = r.rate / browser_rate
        met = r.rate >= TARGET_RATE and ratio >= TARGET_RATIO
        print(f"target {r.label}: {r.rate:,.0f} rows/s (≥ {TARGET_RATE:,}), {ratio:.2f} of the "
              f"browser upload (≥ {TARGET_RATIO}): {'met' if met else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
