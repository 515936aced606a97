"""Benchmark the API over HTTP: the production server (gunicorn with
``usage_portal/gunicorn.py``, as the README's operations section runs it) and wrk (Debian's
`wrk`, a C load generator with a Lua script) in another process, on PostgreSQL::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/up_api_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/4 \\
        .venv/bin/python bench/api_ingest.py [--seconds 20] [--connections 16]

Each phase first runs wrk for ``--warm`` seconds, not counted (each process's first calls
read the key and the meter and connect to the database and the broker).

1. v1 meter event create, one event a request (with an Idempotency-Key, as the SDK sends),
   ``--connections`` clients: events/s and the latency percentiles wrk reports (p50, p90,
   p99), first with no worker running (the inbox fills), then with a Celery worker draining
   the inbox meanwhile on the same cores; then the time until the worker has counted all.
2. v2 meter event stream, 100 events a request, with no Celery worker running: events
   accepted per second (each request's events stored in the inbox before its 202).
3. The backlog drained: a Celery worker (``--concurrency 2``) is started and timed until
   the inbox is empty: events drained into events and rollups per second.

Then it checks that every accepted event is stored once (v1 2xx + stream events = events
in the table). The database must be a dedicated one whose name contains "bench": the script
TRUNCATES the usage and API tables.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CUSTOMERS = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--web-workers", type=int, default=0, help="0: the config's")
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--wrk-threads", type=int, default=2)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres") or "bench" not in urlparse(url).path:
        sys.exit("Set DATABASE_URL to a dedicated PostgreSQL database named like *bench*.")
    if not os.environ.get("CELERY_BROKER_URL", "").startswith("redis"):
        sys.exit("Set CELERY_BROKER_URL to a Redis database of its own (redis://.../4).")
    if shutil.which("wrk") is None:
        sys.exit("Install wrk: apt-get install wrk")
    _create_database(url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usage_portal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    secret = _setup()
    port = _free_port()
    server = _gunicorn(port, args.web_workers)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(base)
        run = uuid.uuid4().hex[:8]
        _wrk(base, "meter_events.lua", args, args.warm, API_KEY=secret, API_RUN=f"w{run}")
        alone = _wrk(base, "meter_events.lua", args, args.seconds, API_KEY=secret,
                     API_RUN=f"v1{run}a")  # fmt: skip
        print(f"v1 meter events, no worker: {alone['rps']:,.0f} events/s, p50 {alone['50']} "
              f"p90 {alone['90']} p99 {alone['99']}, non-2xx {alone['non2xx']}")  # fmt: skip
        worker = _worker()
        try:
            _drained_wait()  # the backlog so far
            v1 = _wrk(base, "meter_events.lua", args, args.seconds, API_KEY=secret,
                      API_RUN=f"v1{run}")  # fmt: skip
            print(f"v1 meter events: {v1['rps']:,.0f} events/s, p50 {v1['50']} p90 {v1['90']} "
                  f"p99 {v1['99']}, non-2xx {v1['non2xx']} (a worker draining)")  # fmt: skip
            started = time.monotonic()
            _drained_wait()
            print(f"v1 events all counted {time.monotonic() - started:.1f} s after wrk stopped")
        finally:
            _stop(worker)
        token = _session_token(base, secret)
        _wrk(base, "meter_event_stream.lua", args, args.warm, API_TOKEN=token, API_RUN=f"x{run}")
        _drain()  # the warm-up's backlog
        v2 = _wrk(base, "meter_event_stream.lua", args, args.seconds, API_TOKEN=token,
                  API_RUN=f"v2{run}")  # fmt: skip
        print(f"v2 stream accepted: {v2['rps'] * 100:,.0f} events/s ({v2['rps']:,.0f} requests/s), "
              f"p50 {v2['50']} p99 {v2['99']}, non-2xx {v2['non2xx']}")  # fmt: skip
        drained, seconds = _drain()
        print(f"v2 stream drained: {drained:,} events in {seconds:.1f} s = "
              f"{drained / seconds:,.0f} events/s")  # fmt: skip
        _check(float(v1["ok"]) + float(alone["ok"]), drained, run, 2 * args.connections)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _create_database(url: str) -> None:
    import psycopg

    name = urlparse(url).path.lstrip("/")
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        if not connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def _setup() -> str:
    from django.db import connection

    from api.services import api_key_create
    from customers.models import Customer
    from meters.models import Meter

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE api_streamrequest, api_idempotentreply, meters_eventrejection, "
            "meters_usagerollup, meters_meterevent, meters_eventbatch, "
            "meters_storedidentifierset CASCADE"
        )
    Meter.objects.update_or_create(event_name="bench_api", defaults={"display_name": "bench api"})
    refs = [f"cus_bench_{n:05d}" for n in range(CUSTOMERS)]
    have = set(Customer.objects.filter(external_id__in=refs).values_list("external_id", flat=True))
    Customer.objects.bulk_create([Customer(external_id=ref) for ref in refs if ref not in have])
    _, secret = api_key_create(name=f"bench-{uuid.uuid4().hex[:8]}", role="finance", actor=None)
    return secret


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _gunicorn(port: int, workers: int) -> subprocess.Popen[bytes]:
    command = [str(ROOT / ".venv/bin/gunicorn"), "-c", "python:usage_portal.gunicorn",
               "usage_portal.wsgi", "--bind", f"127.0.0.1:{port}",
               "--log-level", "warning"]  # fmt: skip
    if workers:
        command += ["--workers", str(workers)]
    return subprocess.Popen(command, cwd=ROOT, start_new_session=True)


def _wait_for(base: str) -> None:
    import requests

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(base + "/v1/billing/meters", timeout=2)
            return
        except requests.RequestException:  # not listening yet, or booting slowly
            time.sleep(0.2)
    sys.exit("gunicorn did not start")


def _wrk(
    base: str, script: str, args: argparse.Namespace, seconds: int, **env: str
) -> dict[str, float | str]:
    command = ["wrk", "--latency", "-t", str(args.wrk_threads), "-c", str(args.connections),
               "-d", f"{seconds}s", "-s", str(ROOT / "bench/wrk" / script), base]  # fmt: skip
    environment = {**os.environ, "API_CUSTOMERS": str(CUSTOMERS), **env}
    out = subprocess.run(
        command, capture_output=True, text=True, env=environment, check=True
    ).stdout
    result: dict[str, float | str] = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "non2xx": int(re.search(r"non2xx (\d+)", out).group(1)),  # type: ignore[union-attr]
    }
    for percent in ("50", "90", "99"):
        found = re.search(rf"^\s+{percent}%\s+(\S+)", out, re.MULTILINE)
        result[percent] = found.group(1) if found else "?"
    result["ok"] = float(result["requests"]) - float(result["non2xx"])
    return result


def _session_token(base: str, secret: str) -> str:
    import requests

    reply = requests.post(
        base + "/v2/billing/meter_event_session",
        json={},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    reply.raise_for_status()
    return str(reply.json()["authentication_token"])


def _worker() -> subprocess.Popen[bytes]:
    from usage_portal.celery import app

    app.control.purge()  # drains queued by earlier phases: the worker drains what is there
    command = [str(ROOT / ".venv/bin/celery"), "-A", "usage_portal", "worker", "--concurrency=2",
               "--loglevel=WARNING", "--without-gossip", "--without-mingle"]  # fmt: skip
    worker = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    time.sleep(3)  # connected
    return worker


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()  # the main process only: a warm shutdown lets its pool finish
    worker.wait(timeout=120)


def _drained_wait() -> None:
    from api.models import StreamRequest
    from api.stream import DRAINS_AT_ONCE
    from api.tasks import stream_drain_task

    for _ in range(DRAINS_AT_ONCE):  # as a busy API's sends would: drains share the backlog
        stream_drain_task.delay()
    while StreamRequest.objects.filter(drained_at__isnull=True).exists():
        time.sleep(0.1)


def _drain() -> tuple[int, float]:
    """Start a worker on the inbox the stream filled; (events drained, seconds)."""
    from django.db.models import Sum

    from api.models import StreamRequest

    time.sleep(1)  # the requests wrk left in flight are answered (stored) first
    pending = StreamRequest.objects.filter(drained_at__isnull=True)
    events = int(pending.aggregate(total=Sum("event_count"))["total"] or 0)
    worker = _worker()
    try:
        started = time.monotonic()
        _drained_wait()
        return events, time.monotonic() - started
    finally:
        _stop(worker)


def _check(v1_ok: float, drained: int, run: str, connections: int) -> None:
    """Every stream event accepted (in the inbox before its 202) is stored once; v1 events
    stored are those wrk saw answered 2xx plus at most one in flight per connection when it
    stopped (wrk does not count those)."""
    from events.models import MeterEvent

    v1 = MeterEvent.objects.filter(identifier__startswith=f"v1{run}").count()
    v2 = MeterEvent.objects.filter(identifier__startswith=f"v2{run}-").count()
    print(f"events stored: v1 {v1:,} (answered 2xx: {int(v1_ok):,}), stream {v2:,} "
          f"(accepted: {drained:,})")  # fmt: skip
    if v2 != drained or not int(v1_ok) <= v1 <= int(v1_ok) + connections:
        sys.exit("MISMATCH: an accepted event was lost or counted twice")


if __name__ == "__main__":
    main()
