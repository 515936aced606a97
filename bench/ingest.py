"""Benchmark the ingestion core and the summaries selector on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/usage_portal_bench \\
        .venv/bin/python bench/ingest.py [--events 1000000] [--total 10000000] [--extra core|sql]

1. Ingests ``--events`` synthetic events through ``meter_events_ingest`` in batches of
   ``--batch`` (50,000) and prints events per second.
2. Re-ingests one batch of already stored events (all duplicates) and prints events/s.
3. Tops the events table up to ``--total`` events -- through the core (``--extra core``) or
   with one set-based SQL insert plus a rollup rebuild (``--extra sql``) -- and prints the
   time of a 30-day daily summary of the busiest customer, read from the rollups and from
   the raw events, and the time of the event explorer's first and a deep keyset page.

The database must be a dedicated one whose name contains "bench": the script TRUNCATES the
meters tables. It creates the database and migrates it if needed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from events.ingestion import EventInput

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CUSTOMERS = 2000
METERS = 3
BUSIEST_SHARE = 0.05  # the busiest customer sends this share of all events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--total", type=int, default=10_000_000)
    parser.add_argument("--extra", choices=["core", "sql"], default="core")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    name = urlparse(url).path.lstrip("/")
    if not url.startswith("postgres") or "bench" not in name:
        sys.exit("Set DATABASE_URL to a dedicated PostgreSQL database named like *bench*.")
    _create_database(url, name)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usage_portal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    _run(args)


def _create_database(url: str, name: str) -> None:
    import psycopg

    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def _run(args: argparse.Namespace) -> None:
    from django.db import connection

    from customers.models import Customer
    from events.ingestion import EventInput, event_batch_create, meter_events_ingest
    from events.models import EventBatch, MeterEvent
    from meters.models import Meter
    from usage.summaries import meter_event_summaries

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE meters_usagerollup, meters_eventrejection, meters_meterevent, "
            "meters_eventbatch, meters_customer, meters_meter RESTART IDENTITY CASCADE"
        )
    meters = [
        Meter.objects.create(display_name=f"Bench {n}", event_name=f"bench_{n}")
        for n in range(METERS)
    ]
    customers = Customer.objects.bulk_create(
        [Customer(external_id=f"cus_bench_{n:05d}") for n in range(CUSTOMERS)]
    )
    busiest = customers[0]
    now = datetime.now(UTC).replace(microsecond=0)
    span = int(timedelta(days=30).total_seconds())
    rng = random.Random(42)
    sequence = 0

    def make_batch(size: int) -> list[EventInput]:
        nonlocal sequence
        events = []
        for _ in range(size):
            sequence += 1
            customer = busiest if rng.random() < BUSIEST_SHARE else rng.choice(customers)
            meter = meters[sequence % METERS]
            events.append(
                EventInput(
                    event_name=meter.event_name,
                    payload={
                        "stripe_customer_id": customer.external_id,
                        "value": str(rng.randint(1, 100)),
                    },
                    identifier=f"bench-{sequence}",
                    timestamp=now - timedelta(seconds=rng.randrange(span)),
                )
            )
        return events

    print(f"Ingesting {args.events:,} events through the core in batches of {args.batch:,}")
    ingest_seconds = 0.0
    done = 0
    while done < args.events:
        size = min(args.batch, args.events - done)
        events = make_batch(size)
        started = time.perf_counter()
        report = meter_events_ingest(
            events=events, batch=event_batch_create(source=EventBatch.Source.API), now=now
        )
        elapsed = time.perf_counter() - started
        assert report.accepted == size, report.rejected
        ingest_seconds += elapsed
        done += size
        print(f"  {done:>10,} events  batch {size / elapsed:>9,.0f} events/s")
    print(
        f"INGEST: {done:,} events in {ingest_seconds:.1f} s = {done / ingest_seconds:,.0f} events/s"
    )

    replay = _replay(args.batch)
    started = time.perf_counter()
    again = meter_events_ingest(
        events=replay,
        batch=event_batch_create(source=EventBatch.Source.API),
        now=now,
    )
    elapsed = time.perf_counter() - started
    print(
        f"RE-INGEST of {args.batch:,} already stored events (all duplicates): "
        f"{args.batch / elapsed:,.0f} events/s (duplicates={again.duplicates:,})"
    )

    stored = MeterEvent.objects.count()
    extra = args.total - stored
    if extra > 0:
        started = time.perf_counter()
        if args.extra == "core":
            print(f"Adding {extra:,} more events through the core")
            while extra > 0:
                size = min(args.batch, extra)
                meter_events_ingest(
                    events=make_batch(size),
                    batch=event_batch_create(source=EventBatch.Source.API),
                    now=now,
                )
                extra -= size
        else:
            print(f"Adding {extra:,} more events with set-based SQL, then rebuilding rollups")
            _sql_fill(extra, sequence, now, span, meters, customers, busiest)
        elapsed = time.perf_counter() - started
        print(f"  filled in {elapsed:.0f} s")
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE meters_meterevent")
            cursor.execute("VACUUM ANALYZE meters_usagerollup")
    stored = MeterEvent.objects.count()
    print(f"Events stored: {stored:,}")

    today = now.replace(hour=0, minute=0, second=0)
    start, end = today - timedelta(days=30), today
    meter = meters[0]
    busy_events = MeterEvent.objects.filter(meter=meter, customer=busiest).count()
    print(f"Busiest customer has {busy_events:,} events on {meter.event_name}")
    for label, from_events in (("rollups", False), ("raw events", True)):
        timings = []
        result = None
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = meter_event_summaries(
                meter=meter,
                customer=busiest,
                start=start,
                end=end,
                grouping="day",
                from_events=from_events,
            )
            timings.append((time.perf_counter() - started) * 1000)
        assert result is not None
        total = sum(s.aggregated_value for s in result)
        print(
            f"SUMMARY 30 days by day from {label}: median {statistics.median(timings):.1f} ms, "
            f"min {min(timings):.1f} ms (total {total})"
        )

    # The event explorer: keyset pages cost the same at any depth.
    from events.selectors import EventFilters, event_explorer

    deep = MeterEvent.objects.order_by("id").values_list("id", flat=True)[stored // 10]
    quiet = customers[-1]
    for label, filters in (
        ("all events", EventFilters()),
        ("busiest customer", EventFilters(customer=busiest)),
        ("one meter, one small customer", EventFilters(meter=meter, customer=quiet)),
    ):
        for depth, before in (("first page", None), ("deep page", deep)):
            timings = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                event_explorer(filters=filters, before=before, per_page=50)
                timings.append((time.perf_counter() - started) * 1000)
            print(
                f"EXPLORER {label}, {depth}: median {statistics.median(timings):.1f} ms "
                f"(50 rows, newest first)"
            )

    # Reverting an upload cancels its whole batch; rollups are corrected in the same step.
    from events.ingestion import event_batch_cancel
    from events.models import EventBatch as Batch

    first_batch = Batch.objects.order_by("id").first()
    assert first_batch is not None
    started = time.perf_counter()
    cancelled = event_batch_cancel(batch=first_batch, user=_bench_user())
    elapsed = time.perf_counter() - started
    print(f"CANCEL one batch of {cancelled:,} events: {elapsed:.1f} s")


def _bench_user():
    from django.contrib.auth.models import User

    user, _ = User.objects.get_or_create(username="bench")
    return user


def _replay(size: int) -> list[EventInput]:
    """The first ``size`` events of the run again: identical content, so all duplicates."""
    from events.ingestion import EventInput
    from events.models import MeterEvent

    rows = MeterEvent.objects.select_related("meter", "customer").order_by("id")[:size]
    return [
        EventInput(
            event_name=row.meter.event_name,
            payload={"stripe_customer_id": row.customer.external_id, "value": str(row.value)},
            identifier=row.identifier,
            timestamp=row.timestamp,
        )
        for row in rows
    ]


def _sql_fill(extra, sequence, now, span, meters, customers, busiest) -> None:
    from django.db import connection, transaction

    from events.ingestion import event_batch_create
    from events.models import EventBatch

    customer_ids = [c.pk for c in customers]
    with transaction.atomic(), connection.cursor() as cursor:
        batch = event_batch_create(source=EventBatch.Source.API)
        cursor.execute(
            "INSERT INTO meters_meterevent (identifier, meter_id, customer_id, timestamp, value, "
            "payload, batch_id, received_at, superseded) "
            "SELECT 'bench-' || (%s + g), (%s::bigint[])[1 + g %% %s], "
            "CASE WHEN random() < %s THEN %s "
            "ELSE (%s::bigint[])[1 + floor(random() * %s)::int] END, "
            "%s::timestamptz - make_interval(secs => floor(random() * %s)), "
            "1 + floor(random() * 100), '{}'::jsonb, %s, %s, false "
            "FROM generate_series(1, %s) g",
            [
                sequence,
                [m.pk for m in meters],
                len(meters),
                BUSIEST_SHARE,
                busiest.pk,
                customer_ids,
                len(customer_ids),
                now,
                span,
                batch.pk,
                now,
                extra,
            ],
        )
        cursor.execute("TRUNCATE meters_usagerollup")
        cursor.execute(
            "INSERT INTO meters_usagerollup (meter_id, customer_id, hour, value_sum, event_count, "
            "last_value, last_timestamp, last_event_id) "
            "SELECT a.meter_id, a.customer_id, a.hour, a.total, a.events, l.value, l.timestamp, "
            "l.id FROM (SELECT meter_id, customer_id, date_trunc('hour', timestamp, 'UTC') "
            "AS hour, sum(value) AS total, count(*) AS events FROM meters_meterevent "
            "GROUP BY 1, 2, 3) a JOIN (SELECT DISTINCT ON (meter_id, customer_id, "
            "date_trunc('hour', timestamp, 'UTC')) meter_id, customer_id, "
            "date_trunc('hour', timestamp, 'UTC') AS hour, value, timestamp, "
            "id FROM meters_meterevent ORDER BY meter_id, customer_id, "
            "date_trunc('hour', timestamp, 'UTC'), timestamp DESC, id DESC) l "
            "USING (meter_id, customer_id, hour)"
        )


if __name__ == "__main__":
    main()
