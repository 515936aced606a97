"""Benchmark CSV uploads: stored file → ``succeeded``, through a real Celery worker.

PostgreSQL::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/up_upl_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/3 USAGE_PORTAL_VAR_DIR=var/upl-bench \\
        .venv/bin/python bench/csv_import.py [--rows 1000000] [--big-rows 5000000]

1. Generates a file of ``--rows`` rows (2,000 customers, 5 meters, the last 30 days).
2. First import: times the upload from the moment it is queued to ``succeeded``.
3. Re-import of the same file (every row a duplicate).
4. A first import of a ``--big-rows`` file (0 skips it), for the worker's memory.

The embedded default (SQLite and the filesystem broker, as ``make run`` serves it)::

    .venv/bin/python bench/csv_import.py --embedded [--rows 1000000] [--big-rows 5000000]

runs in a new temporary var dir (database, broker, media), with DATABASE_URL and
CELERY_BROKER_URL ignored: 1. and 2. as above, 3. the re-import, then 4. ``--big-rows``
events loaded straight through the ingestion core (``meter_events_ingest_columns`` in this
process, in chunks of 200,000: the same set-based path, without a file), their daily rollups
refreshed, and a first import of another ``--rows`` file into that database. ``--layout``
chooses the files' identifiers: ``identifier`` (an identifier column, the default of
``--embedded``) or ``content`` (none: identifiers derived from each row's content).
``--windowed`` gives the "last" meter a day event time window (each customer's last event
of a day counts, as the demo's ``active_seats``), so a fifth of the rows re-decide windows.

Each run starts a fresh worker (``celery -A usage_portal worker``, ``--concurrency`` 1, or 2
as ``make run`` for the embedded default, so the daily-rollup refreshes run beside the
import) and reads the kernel's peak RSS (VmHWM) of the worker's processes when the job ends.
A PostgreSQL database must be a dedicated one whose name contains "bench": the script
TRUNCATES the usage tables.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CUSTOMERS = 2000
METERS = [  # event name, formula, value key
    ("bench_api_calls", "sum", "value"),
    ("bench_tokens", "sum", "tokens"),
    ("bench_storage_gb", "last", "value"),
    ("bench_logins", "count", "value"),
    ("bench_compute_ms", "sum", "value"),
]
WINDOWED = "bench_storage_gb"  # --windowed: the "last" meter counts each day's last event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=5_000_000)
    parser.add_argument("--chunk", type=int, default=None, help="USAGE_UPLOAD_CHUNK_ROWS")
    parser.add_argument("--embedded", action="store_true", help="SQLite, filesystem broker")
    parser.add_argument("--layout", choices=["identifier", "content"], default=None)
    parser.add_argument("--concurrency", type=int, default=None, help="worker processes")
    parser.add_argument(
        "--windowed", action="store_true", help=f"{WINDOWED} with a day event time window"
    )
    args = parser.parse_args()
    args.layout = args.layout or ("identifier" if args.embedded else "content")
    args.concurrency = args.concurrency or (2 if args.embedded else 1)

    if args.embedded:
        for name in ("DATABASE_URL", "CELERY_BROKER_URL", "USAGE_PORTAL_SQLITE_NAME"):
            os.environ.pop(name, None)
        os.environ["USAGE_PORTAL_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-embedded-")
    else:
        url = os.environ.get("DATABASE_URL", "")
        name = urlparse(url).path.lstrip("/")
        if not url.startswith("postgres") or "bench" not in name:
            sys.exit("Set DATABASE_URL to a dedicated PostgreSQL database named like *bench*.")
        _create_database(url, name)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usage_portal.settings")
    if args.chunk:
        os.environ["USAGE_UPLOAD_CHUNK_ROWS"] = str(args.chunk)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    _run(args)


def _create_database(url: str, name: str) -> None:
    import psycopg

    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if not exists.fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def _setup(*, windowed: bool = False) -> tuple[object, list[str]]:
    from django.contrib.auth.models import User
    from django.db import connection

    from customers.models import Customer
    from meters.models import Meter

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE uploads_upload, meters_eventrejection, meters_usagerollup, "
                "meters_meterevent, meters_eventbatch, meters_storedidentifierset CASCADE"
            )
    for event_name, formula, value_key in METERS:
        Meter.objects.update_or_create(
            event_name=event_name,
            defaults={
                "display_name": event_name.replace("_", " "),
                "aggregation_formula": formula,
                "value_settings_key": value_key,
                "event_time_window": "day" if windowed and event_name == WINDOWED else "",
            },
        )
    refs = [f"cus_bench_{n:05d}" for n in range(CUSTOMERS)]
    existing = set(
        Customer.objects.filter(external_id__in=refs).values_list("external_id", flat=True)
    )
    Customer.objects.bulk_create([Customer(external_id=ref) for ref in refs if ref not in existing])
    user, _ = User.objects.get_or_create(username="bench")
    return user, refs


def _generate(path: Path, rows: int, refs: list[str], *, layout: str, seed: int = 0) -> None:
    """A file of ``rows`` random rows; with ``layout`` "identifier", an identifier column
    (``bench_<seed>_<row>``: distinct between files of different seeds)."""
    if path.exists():
        return
    rng = random.Random(rows + seed)
    start = int((datetime.now(UTC) - timedelta(days=30)).timestamp())
    span = 30 * 24 * 3600 - 3600
    header = "timestamp,event_name,payload_stripe_customer_id,payload_value,payload_tokens\n"
    with_ids = layout == "identifier"
    header = ("identifier," if with_ids else "") + header
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        out.write(header)
        lines = []
        for n in range(rows):
            event_name, _, value_key = METERS[n % len(METERS)]
            value = f"{rng.randint(1, 5000)}.{rng.randint(0, 99):02d}"
            tokens, plain = (value, "") if value_key == "tokens" else ("", value)
            ts = start + rng.randrange(span)
            ident = f"bench_{seed}_{n:08d}," if with_ids else ""
            ref = refs[rng.randrange(len(refs))]
            lines.append(f"{ident}{ts},{event_name},{ref},{plain},{tokens}\n")
            if len(lines) >= 100_000:
                out.writelines(lines)
                lines = []
        out.writelines(lines)
    tmp.rename(path)


@dataclass
class Result:
    label: str
    rows: int
    seconds: float
    processing_seconds: float
    imported: int
    duplicates: int
    failed: int
    peak_rss_mb: float
    main_rss_mb: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _descendants(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _import(label: str, path: Path, user: object, concurrency: int) -> Result:
    from django.core.files import File

    from uploads.models import Upload
    from uploads.services import upload_create

    # Follow-up tasks a previous run queued (the meter overview's daily-rollup refreshes) are
    # not this run's work: drop them before the worker starts, so it does not reserve one
    # and run it first. The bench's broker is a dedicated one, like its database.
    from usage_portal.celery import app

    app.control.purge()
    log = path.parent / f"worker-{label.replace(' ', '-')}.log"
    with log.open("wb") as out:
        command = [str(ROOT / ".venv/bin/celery"), "-A", "usage_portal", "worker"]
        command += [f"--concurrency={concurrency}", "--loglevel=WARNING", "--without-gossip"]
        command += ["--without-mingle", "-n", f"bench-{os.getpid()}@%h"]
        worker = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        time.sleep(4)  # let the worker connect before the clock starts
        with path.open("rb") as handle:
            # A corrected copy: the re-import of the same file is then every row a duplicate.
            upload = upload_create(
                file=File(handle, name=path.name),  # type: ignore[arg-type]
                user=user,  # type: ignore[arg-type]
                rows_without_identifier=Upload.RowsWithoutIdentifier.CORRECTED_COPY,
            )
        while True:
            time.sleep(0.1)
            upload.refresh_from_db()
            if upload.is_finished:
                break
            if worker.poll() is not None:
                sys.exit(f"The worker died; see {log}")
        children = _descendants(worker.pid)
        peak = max((_vm_hwm_mb(pid) for pid in children), default=0.0)
        main_rss = _vm_hwm_mb(worker.pid)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a warm shutdown that hangs (filesystem broker)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    finished = (Upload.Status.SUCCEEDED, Upload.Status.SUCCEEDED_WITH_ERRORS)
    if upload.status not in (*finished, Upload.Status.NOTHING_NEW):
        sys.exit(f"{label}: {upload.status} {upload.failed_reason}")
    assert upload.queued_at and upload.finished_at and upload.started_at
    return Result(
        label=label,
        rows=upload.rows_read,
        seconds=(upload.finished_at - upload.queued_at).total_seconds(),
        processing_seconds=(upload.finished_at - upload.started_at).total_seconds(),
        imported=upload.rows_imported,
        duplicates=upload.rows_duplicate,
        failed=upload.rows_failed,
        peak_rss_mb=peak,
        main_rss_mb=main_rss,
    )


def _run(args: argparse.Namespace) -> None:
    from django.conf import settings
    from django.db import connection

    from uploads.limits import chunk_rows

    user, refs = _setup(windowed=args.windowed)
    folder = Path(settings.VAR_DIR) / "bench-files"
    if args.embedded:  # the files outlive the temporary var dir, for the next run
        folder = ROOT / "var" / "bench-files"
    folder.mkdir(parents=True, exist_ok=True)
    day = datetime.now(UTC).strftime("%Y%m%d")
    path = folder / f"usage-{args.rows}-{args.layout}-{day}.csv"
    _generate(path, args.rows, refs, layout=args.layout)
    print(f"file: {path} ({path.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows)")
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    if args.windowed:
        print(f"meter {WINDOWED}: a day event time window")
    results = [_import("first import", path, user, args.concurrency)]
    _print(results[-1:])
    results.append(_import("re-import", path, user, args.concurrency))
    _print(results[-1:])
    if args.big_rows and args.embedded:
        seconds = _load_events(args.big_rows, refs)
        print(f"loaded {args.big_rows:,} events through the core in {seconds:.0f} s")
        _at_rest()
        other = folder / f"usage-{args.rows}-{args.layout}-{day}-other.csv"
        _generate(other, args.rows, refs, layout=args.layout, seed=1)
        label = f"into {args.big_rows // 1_000_000}M events"
        results.append(_import(label, other, user, args.concurrency))
    elif args.big_rows:
        _setup(windowed=args.windowed)
        big = folder / f"usage-{args.big_rows}-{args.layout}-{day}.csv"
        _generate(big, args.big_rows, refs, layout=args.layout)
        print(f"file: {big} ({big.stat().st_size / 1e6:.0f} MB, {args.big_rows:,} rows)")
        label = f"first import {args.big_rows // 1_000_000}M"
        results.append(_import(label, big, user, args.concurrency))
    per = "transaction" if connection.vendor == "postgresql" else "chunk"
    print(f"chunk: {chunk_rows():,} rows per {per}")
    _print(results)


def _print(results: list[Result]) -> None:
    print(f"{'run':<22}{'rows':>11}{'queued→done s':>15}{'rows/s':>10}{'imported':>11}"
          f"{'duplicate':>11}{'failed':>8}{'pool RSS MB':>13}{'main RSS MB':>13}")  # fmt: skip
    for r in results:
        counts = f"{r.imported:>11,}{r.duplicates:>11,}{r.failed:>8,}"
        memory = f"{r.peak_rss_mb:>13.0f}{r.main_rss_mb:>13.0f}"
        print(f"{r.label:<22}{r.rows:>11,}{r.seconds:>15.1f}{r.rate:>10,.0f}{counts}{memory}")


def _at_rest() -> None:
    """A database that holds the events, not one still writing them: the WAL checkpointed
    into the file and the load's dirty pages on disk (the kernel flushes several GB of them
    for a minute after the load, and the next import's writes queued behind them)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.sync()


def _load_events(count: int, refs: list[str]) -> float:
    """Load ``count`` random events (identifiers ``load_<n>``) straight through the ingestion
    core, then refresh their daily rollups: a database that already holds them. Seconds."""
    from django.db import transaction

    from events.ingestion import EventColumns, event_batch_create, meter_events_ingest_columns
    from events.models import EventBatch
    from usage.rollups import usage_days_refresh

    began = time.monotonic()
    rng = random.Random(count)
    start = int((datetime.now(UTC) - timedelta(days=30)).timestamp())
    batch = event_batch_create(source=EventBatch.Source.CSV)
    step = 200_000
    for low in range(0, count, step):
        numbers = range(low, min(count, low + step))
        names = [METERS[n % len(METERS)][0] for n in numbers]
        values = [f"{rng.randint(1, 5000)}.{rng.randint(0, 99):02d}" for _ in numbers]
        columns = EventColumns(
            event_names=names,
            timestamps=[start + rng.randrange(30 * 24 * 3600 - 3600) for _ in numbers],
            identifiers=[f"load_{n:09d}" for n in numbers],
            payload={
                "stripe_customer_id": [refs[rng.randrange(len(refs))] for _ in numbers],
                "value": [v if n % 5 != 1 else "" for v, n in zip(values, numbers, strict=True)],
                "tokens": [v if n % 5 == 1 else "" for v, n in zip(values, numbers, strict=True)],
            },
            lines=[n + 2 for n in numbers],
            raws=[{} for _ in numbers],
        )
        with transaction.atomic():
            meter_events_ingest_columns(columns=columns, batch=batch)
    usage_days_refresh()
    return time.monotonic() - began


if __name__ == "__main__":
    main()
