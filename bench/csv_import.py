"""Benchmark CSV uploads: stored file → ``succeeded``, with one Celery worker on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/up_upl_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/3 USAGE_PORTAL_VAR_DIR=var/upl-bench \\
        .venv/bin/python bench/csv_import.py [--rows 1000000] [--big-rows 5000000]

1. Generates a file of ``--rows`` rows (2,000 customers, 5 meters, the last 30 days).
2. First import: times the upload from the moment it is queued to ``succeeded``.
3. Re-import of the same file (every row a duplicate).
4. A first import of a ``--big-rows`` file (0 skips it), for the worker's memory.

Each run starts a fresh worker (``celery -A usage_portal worker --concurrency=1``) and reads
the kernel's peak RSS (VmHWM) of the worker's processes when the job ends. The database must
be a dedicated one whose name contains "bench": the script TRUNCATES the usage tables.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=5_000_000)
    parser.add_argument("--chunk", type=int, default=None, help="USAGE_UPLOAD_CHUNK_ROWS")
    args = parser.parse_args()

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


def _setup() -> tuple[object, list[str]]:
    from django.contrib.auth.models import User
    from django.db import connection

    from customers.models import Customer
    from meters.models import Meter

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
            },
        )
    refs = [f"cus_bench_{n:05d}" for n in range(CUSTOMERS)]
    existing = set(
        Customer.objects.filter(external_id__in=refs).values_list("external_id", flat=True)
    )
    Customer.objects.bulk_create([Customer(external_id=ref) for ref in refs if ref not in existing])
    user, _ = User.objects.get_or_create(username="bench")
    return user, refs


def _generate(path: Path, rows: int, refs: list[str]) -> None:
    if path.exists():
        return
    rng = random.Random(rows)
    start = int((datetime.now(UTC) - timedelta(days=30)).timestamp())
    span = 30 * 24 * 3600 - 3600
    header = "timestamp,event_name,payload_stripe_customer_id,payload_value,payload_tokens\n"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        out.write(header)
        lines = []
        for n in range(rows):
            event_name, _, value_key = METERS[n % len(METERS)]
            value = f"{rng.randint(1, 5000)}.{rng.randint(0, 99):02d}"
            tokens, plain = (value, "") if value_key == "tokens" else ("", value)
            ts = start + rng.randrange(span)
            lines.append(f"{ts},{event_name},{refs[rng.randrange(len(refs))]},{plain},{tokens}\n")
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


def _import(label: str, path: Path, user: object) -> Result:
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
        command += ["--concurrency=1", "--loglevel=WARNING", "--without-gossip"]
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
        worker.wait(timeout=60)
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

    user, refs = _setup()
    folder = Path(settings.VAR_DIR) / "bench-files"
    folder.mkdir(parents=True, exist_ok=True)
    day = datetime.now(UTC).strftime("%Y%m%d")
    path = folder / f"usage-{args.rows}-{day}.csv"
    _generate(path, args.rows, refs)
    print(f"file: {path} ({path.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows)")
    results = [_import("first import", path, user), _import("re-import", path, user)]
    if args.big_rows:
        _setup()
        big = folder / f"usage-{args.big_rows}-{day}.csv"
        _generate(big, args.big_rows, refs)
        print(f"file: {big} ({big.stat().st_size / 1e6:.0f} MB, {args.big_rows:,} rows)")
        results.append(_import(f"first import {args.big_rows // 1_000_000}M", big, user))
    print(f"chunk: {settings.USAGE_UPLOAD_CHUNK_ROWS} rows per transaction")
    print(f"{'run':<22}{'rows':>11}{'queued→done s':>15}{'rows/s':>10}{'imported':>11}"
          f"{'duplicate':>11}{'failed':>8}{'pool RSS MB':>13}{'main RSS MB':>13}")  # fmt: skip
    for r in results:
        counts = f"{r.imported:>11,}{r.duplicates:>11,}{r.failed:>8,}"
        memory = f"{r.peak_rss_mb:>13.0f}{r.main_rss_mb:>13.0f}"
        print(f"{r.label:<22}{r.rows:>11,}{r.seconds:>15.1f}{r.rate:>10,.0f}{counts}{memory}")


if __name__ == "__main__":
    main()
