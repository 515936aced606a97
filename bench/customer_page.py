"""Benchmark the customer usage pages and the meter overview on 10,000,000 events (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/up_cup_bench \\
        USAGE_PORTAL_VAR_DIR=var/cup-bench .venv/bin/python bench/customer_page.py \\
        [--events 10000000] [--requests 100] [--reload]

Loads (once; ``--reload`` starts over) 2,000 customers with Zipf-skewed usage (customer of
rank r gets a share proportional to 1/r), 5 meters (3 sum, 1 count, 1 last) and ``--events``
events spread uniformly over the last 90 days, into a dedicated database whose name must
contain "bench". The raw events are bulk-loaded with one INSERT ... SELECT over
generate_series (the ingestion core would take far longer for 10M rows), and the hourly
rollups are then computed from them in SQL with the core's definition (sum and count of the
counted events, "last" = the value of the event with the greatest (timestamp, id)); the script
checks the rollups against raw events for the measured customers before timing anything.
The meter overview's daily rollups (``usage/rollups.py``) are then rebuilt from the hourly
ones through ``usage_days_refresh`` (timed: a full rebuild, and one day of every meter -- what
the after-commit refresh does while usage flows in), and checked against the hourly path.

It then times, in process through Django's test client (middleware, view, selectors, template:
the server's work, no network), ``--requests`` requests each of: the busiest and the median
customer's page, the usage section those pages load (default range: this month, and the
90-day range), and the meter overview and live feed of the busiest meter. Prints p50/p95 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usage_portal.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402

CUSTOMERS = 2000
DAYS = 90
METERS = [
    ("Bench API calls", "bench_api_calls", "sum"),
    ("Bench tokens", "bench_tokens", "sum"),
    ("Bench requests", "bench_requests", "count"),
    ("Bench seats", "bench_seats", "last"),
    ("Bench minutes", "bench_minutes", "sum"),
]


def load(events: int) -> None:
    from customers.models import Customer
    from events.models import EventBatch
    from meters.models import Meter

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE meters_usagerollup, meters_meterevent, meters_eventrejection, "
            "meters_usagealerttrigger, meters_usagealert, meters_eventbatch, "
            "meters_meterdailyrollup, meters_metermonthlyrollup, meters_meterusagetotal, "
            "meters_staleusageday CASCADE"
        )
    Meter.objects.filter(event_name__startswith="bench_").delete()
    Customer.objects.filter(external_id__startswith="bench_cus_").delete()
    meters = [
        Meter.objects.create(display_name=name, event_name=event, aggregation_formula=formula)
        for name, event, formula in METERS
    ]
    Customer.objects.bulk_create(
        Customer(external_id=f"bench_cus_{rank:04d}", name=f"Bench customer {rank}")
        for rank in range(1, CUSTOMERS + 1)
    )
    batch = EventBatch.objects.create(source=EventBatch.Source.API)
    meter_ids = [m.pk for m in meters]
    with connection.cursor() as cursor:
        # Zipf shares: rank r gets events * (1/r) / H(CUSTOMERS).
        cursor.execute(
            "CREATE TEMP TABLE bench_share AS SELECT c.id AS customer_id, c.external_id, "
            "greatest(1, round(%s * (1.0 / c.rank) / h.total))::int AS n "
            "FROM (SELECT id, external_id, substr(external_id, 11)::int AS rank "
            "FROM meters_customer WHERE external_id LIKE 'bench_cus_%%') c "
            "CROSS JOIN (SELECT sum(1.0 / g) AS total FROM generate_series(1, %s) g) h",
            [events, CUSTOMERS],
        )
        cursor.execute("SELECT sum(n) FROM bench_share")
        print(f"loading {cursor.fetchone()[0]:,} events ...", flush=True)
        cursor.execute("SET synchronous_commit = off")
        cursor.execute(
            "INSERT INTO meters_meterevent (identifier, meter_id, customer_id, timestamp, "
            "value, payload, batch_id, received_at, superseded) "
            "SELECT 'bench_' || x.customer_id || '_' || x.g, "
            "(%s::bigint[])[1 + (x.g * 7 + x.customer_id) %% 5], x.customer_id, x.ts, x.v, "
            "jsonb_build_object('stripe_customer_id', x.external_id, 'value', x.v::text), "
            "%s, x.ts, false FROM (SELECT s.customer_id, s.external_id, g, "
            # Volatile expressions in the select list: evaluated for every row.
            f"date_trunc('second', now() - random() * interval '{DAYS} days') AS ts, "
            "(1 + floor(random() * 1000)) / 10 AS v "
            "FROM bench_share s CROSS JOIN LATERAL generate_series(1, s.n) g) x",
            [meter_ids, batch.pk],
        )
        print(f"  events inserted after {time.perf_counter() - started:.0f} s", flush=True)
        cursor.execute(
            "INSERT INTO meters_usagerollup (meter_id, customer_id, hour, value_sum, "
            "event_count, last_value, last_timestamp, last_event_id) "
            "SELECT meter_id, customer_id, date_trunc('hour', timestamp, 'UTC'), sum(value), "
            "count(*), (array_agg(value ORDER BY timestamp DESC, id DESC))[1], max(timestamp), "
            "(array_agg(id ORDER BY timestamp DESC, id DESC))[1] FROM meters_meterevent "
            "WHERE cancelled_at IS NULL AND NOT superseded GROUP BY 1, 2, 3"
        )
        cursor.execute("ANALYZE meters_meterevent")
        cursor.execute("ANALYZE meters_usagerollup")
        cursor.execute("SELECT count(*) FROM meters_usagerollup")
        rollups = cursor.fetchone()[0]
    print(f"  {rollups:,} rollup rows; loaded in {time.perf_counter() - started:.0f} s", flush=True)


def check(customer, meters) -> None:
    """Rollups equal raw events for this customer, per meter, over the whole 90 days."""
    import datetime as dt

    from usage.summaries import meter_event_summaries

    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    start = end - dt.timedelta(days=DAYS + 1)
    for meter in meters:
        fast = meter_event_summaries(meter=meter, customer=customer, start=start, end=end)
        slow = meter_event_summaries(
            meter=meter, customer=customer, start=start, end=end, from_events=True
        )
        assert fast == slow, (meter, customer, fast, slow)


def build_daily(meters) -> None:
    """Rebuild the overview's daily rollups through the refresh (as the migration would leave
    it: every day stale), then refresh one day of every meter, and check them."""
    import datetime as dt

    from usage.rollups import usage_days_mark_all_stale, usage_days_mark_stale
    from usage.rollups import usage_days_refresh as refresh
    from usage.selectors import meter_top_customers, meter_usage_over_time
    from usage.views import preset_range

    started = time.perf_counter()
    marked = usage_days_mark_all_stale(meter_ids=[m.pk for m in meters])
    days = refresh()
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE meters_meterdailyrollup")
        cursor.execute("VACUUM ANALYZE meters_meterusagetotal")
        cursor.execute("VACUUM ANALYZE meters_metermonthlyrollup")
        cursor.execute("SELECT count(*) FROM meters_meterdailyrollup")
        daily_rows = cursor.fetchone()[0]
    print(
        f"daily rollups rebuilt: {marked} (meter, day) keys, {days} refreshed, "
        f"{daily_rows:,} customer-day rows in {elapsed:.1f} s"
    )
    today = dt.datetime.now(dt.UTC)
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        with transaction.atomic():
            usage_days_mark_stale(keys=[(m.pk, today) for m in meters])
        refresh()
        samples.append((time.perf_counter() - started) * 1000)
    print(
        f"refreshing today for all {len(meters)} meters (the after-commit task's work): "
        f"median {statistics.median(samples):.0f} ms"
    )
    now = dt.datetime.now(dt.UTC)
    for meter in meters:
        for preset in ("7d", "this_month", "90d"):
            span = preset_range(preset, now)
            results = [
                (
                    meter_usage_over_time(
                        meter=meter,
                        start=span.start,
                        end=span.end,
                        grouping=span.grouping,
                        from_hourly=from_hourly,
                    ),
                    meter_top_customers(
                        meter=meter, start=span.start, end=span.end, from_hourly=from_hourly
                    ),
                )
                for from_hourly in (False, True)
            ]
            assert results[0] == results[1], (meter, preset)
    print("overview from daily rollups equals the hourly computation (3 ranges, every meter)")


def timed(client: Client, url: str, runs: int, **headers: str) -> tuple[float, float, int]:
    client.get(url, headers=headers)  # warm up
    samples = []
    status = 0
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        status = response.status_code
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * len(samples)) - 1)]
    return statistics.median(samples), p95, status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--reload", action="store_true")
    args = parser.parse_args()
    database = settings.DATABASES["default"]
    if connection.vendor != "postgresql" or "bench" not in str(database["NAME"]):
        sys.exit("Point DATABASE_URL at a dedicated PostgreSQL database named *bench*.")
    call_command("migrate", verbosity=0)

    from django.contrib.auth.models import Group, User

    from customers.models import Customer
    from events.models import MeterEvent
    from meters.models import Meter

    loaded = MeterEvent.objects.filter(identifier__startswith="bench_").exists()
    if args.reload or not loaded:
        load(args.events)
    meters = list(Meter.objects.filter(event_name__startswith="bench_").order_by("pk"))
    busiest = Customer.objects.get(external_id="bench_cus_0001")
    median = Customer.objects.get(external_id=f"bench_cus_{CUSTOMERS // 2:04d}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM meters_meterevent")
        total = cursor.fetchone()[0]
        cursor.execute(
            "SELECT customer_id, count(*) FROM meters_meterevent WHERE customer_id IN (%s, %s) "
            "GROUP BY 1",
            [busiest.pk, median.pk],
        )
        counts = dict(cursor.fetchall())
    print(
        f"{total:,} events; busiest customer {busiest.external_id}: {counts[busiest.pk]:,}; "
        f"median {median.external_id}: {counts[median.pk]:,}"
    )
    check(busiest, meters)
    check(median, meters)
    print("rollups match raw events for both customers")
    build_daily(meters)

    user, _ = User.objects.get_or_create(username="bench-support")
    user.groups.add(Group.objects.get_or_create(name="support")[0])
    client = Client(SERVER_NAME="localhost")
    client.force_login(user)
    htmx = {"HX-Request": "true"}
    from django.utils import timezone

    from usage.views import explain_url, preset_range

    last_90 = preset_range("90d", timezone.now())
    meter = meters[0]
    cases = []
    for label, customer in (("busiest", busiest), ("median", median)):
        usage = reverse("usage:customer_usage", kwargs={"pk": customer.pk})
        cases += [
            (f"{label} customer: page", customer.get_absolute_url(), {}),
            (f"{label} customer: usage, this month", usage, htmx),
            (f"{label} customer: usage, last 90 days", f"{usage}?range=90d", htmx),
            (
                f"{label} customer: explain a 90-day total",
                explain_url(customer, meter, last_90.start, last_90.end),
                {},
            ),
        ]
    overview = reverse("usage:meter_overview", kwargs={"meter_id": meter.meter_id})
    cases += [
        ("meter overview, this month", overview, htmx),
        ("meter overview, last 7 days", f"{overview}?range=7d", htmx),
        ("meter overview, last 90 days", f"{overview}?range=90d", htmx),
        (
            "meter live feed (polled)",
            reverse("usage:meter_live_feed", kwargs={"meter_id": meter.meter_id}),
            htmx,
        ),
    ]
    print(f"\n{'request':<44} {'p50 ms':>8} {'p95 ms':>8}  ({args.requests} requests each)")
    for label, url, headers in cases:
        p50, p95, status = timed(client, url, args.requests, **headers)
        assert status == 200, (label, status)
        print(f"{label:<44} {p50:8.1f} {p95:8.1f}", flush=True)


if __name__ == "__main__":
    main()
