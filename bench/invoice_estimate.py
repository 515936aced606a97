"""Benchmark: the upcoming-invoice estimate with 10,000,000 events stored.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/up_bil_bench \
        .venv/bin/python bench/invoice_estimate.py

Needs PostgreSQL and a database whose name ends in ``_bench`` (it may truncate the event
tables there). The first run migrates and loads the data; later runs reuse it while the
subscription's current period still covers it (``--reload`` forces a fresh load).

Data: 5 meters (3 sum, 1 count, 1 last), 2,001 customers, 10,000,000 events spread over
the first 20 days of the current billing period; one customer ("cus_bench_big") has 10%
of them (1,000,000 events). That customer subscribes to 5 metered prices: per unit,
package, graduated tiers, volume tiers and a per-unit price on the "last" meter.

Loading: the events are generated in SQL (INSERT ... SELECT generate_series) and the
hourly rollups are computed from them in SQL with the same definition the ingestion core
uses (sum, count, and the value of the event with the greatest (timestamp, id)); pushing
10M events through the core takes minutes and is measured by bench/ingest.py. The script
checks the estimate's quantities against an aggregation over raw events before timing.

Timed: ``subscription_estimate`` (the selector: 5 usage aggregates, pricing, credits) and
the full server round trip of the estimate partial (GET with HX-Request through the
Django test client: middleware, session, selector, template), 50 runs each after 5
warm-up runs. Prints p50, p95 and max in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usage_portal.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from billing import services  # noqa: E402
from billing.models import Price, Subscription  # noqa: E402
from billing.pricing import Tier  # noqa: E402
from billing.selectors import subscription_estimate  # noqa: E402
from customers.models import Customer  # noqa: E402
from events.models import EventBatch  # noqa: E402
from meters.models import Meter  # noqa: E402
from usage.summaries import meter_event_summaries  # noqa: E402

TOTAL_EVENTS = 10_000_000
CHUNK = 1_000_000
OTHER_CUSTOMERS = 2_000
BIG_SHARE = 10  # every 10th event belongs to the big customer
RUNS = 50
WARMUP = 5
METERS = [
    ("bench_requests", Meter.Formula.SUM),
    ("bench_compute", Meter.Formula.SUM),
    ("bench_tokens", Meter.Formula.SUM),
    ("bench_calls", Meter.Formula.COUNT),
    ("bench_seats", Meter.Formula.LAST),
]


def check_database() -> None:
    if connection.vendor != "postgresql":
        sys.exit("This benchmark needs PostgreSQL: set DATABASE_URL.")
    name = settings.DATABASES["default"]["NAME"]
    if not str(name).endswith("_bench"):
        sys.exit(f"Refusing to load data into {name!r}: use a database whose name ends in _bench.")


def current_subscription() -> Subscription | None:
    subscription = (
        Subscription.objects.filter(customer__external_id="cus_bench_big").order_by("-pk").first()
    )
    if subscription is None:
        return None
    period = subscription.schedule.period_at(datetime.now(UTC))
    loaded_until = subscription.billing_cycle_anchor + timedelta(days=20)
    if period is None or period.start != subscription.billing_cycle_anchor:
        return None
    if datetime.now(UTC) < loaded_until:
        return None  # the data must lie in the past
    return subscription


def load() -> Subscription:
    print("Loading 10,000,000 events (SQL) and their hourly rollups ...", flush=True)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE meters_usagerollup, meters_meterevent, billing_creditgrant_prices, "
            "billing_credittransaction, billing_invoiceline, billing_invoice, "
            "billing_subscriptionitem, billing_subscription, billing_creditgrant, "
            "billing_price, meters_eventrejection, meters_eventbatch RESTART IDENTITY CASCADE"
        )
    meters = []
    for event_name, formula in METERS:
        meter, _ = Meter.objects.get_or_create(
            event_name=event_name,
            defaults={"display_name": event_name.replace("_", " "), "aggregation_formula": formula},
        )
        meters.append(meter)
    big, _ = Customer.objects.get_or_create(external_id="cus_bench_big", defaults={"name": "Big"})
    existing = set(
        Customer.objects.filter(external_id__startswith="cus_bench_").values_list(
            "external_id", flat=True
        )
    )
    Customer.objects.bulk_create(
        Customer(external_id=f"cus_bench_{i:05d}")
        for i in range(OTHER_CUSTOMERS)
        if f"cus_bench_{i:05d}" not in existing
    )
    others = list(
        Customer.objects.filter(external_id__startswith="cus_bench_")
        .exclude(pk=big.pk)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    batch = EventBatch.objects.create(source=EventBatch.Source.API)
    # The current period started 25 days ago at 00:00 UTC; events fill its first 20 days.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    anchor = today - timedelta(days=25)
    span_seconds = 20 * 86400
    meter_ids = [m.pk for m in meters]
    with connection.cursor() as cursor:
        for low in range(0, TOTAL_EVENTS, CHUNK):
            with transaction.atomic():
                cursor.execute(
                    """
                    INSERT INTO meters_meterevent (identifier, "timestamp", value, payload,
                        received_at, superseded, batch_id, customer_id, meter_id)
                    SELECT 'bench-' || g,
                        date_trunc('second',
                            %(anchor)s + random() * %(span)s * interval '1 second'),
                        (1 + floor(random() * 100))::numeric,
                        '{}'::jsonb, now(), false, %(batch)s,
                        CASE WHEN g %% %(share)s = 0 THEN %(big)s
                             ELSE (%(others)s::bigint[])[1 + (g / %(share)s) %% %(n_others)s] END,
                        (%(meters)s::bigint[])[1 + (g / 7) %% 5]
                    FROM generate_series(%(low)s, %(high)s) AS g
                    """,
                    {
                        "anchor": anchor,
                        "span": span_seconds,
                        "batch": batch.pk,
                        "share": BIG_SHARE,
                        "big": big.pk,
                        "others": others,
                        "n_others": len(others),
                        "meters": meter_ids,
                        "low": low,
                        "high": low + CHUNK - 1,
                    },
                )
            print(f"  {low + CHUNK:,} events", flush=True)
        cursor.execute(
            """
            INSERT INTO meters_usagerollup (meter_id, customer_id, hour, value_sum, event_count,
                last_value, last_timestamp, last_event_id)
            SELECT meter_id, customer_id, date_trunc('hour', "timestamp" AT TIME ZONE 'UTC')
                    AT TIME ZONE 'UTC',
                sum(value), count(*),
                (array_agg(value ORDER BY "timestamp" DESC, id DESC))[1],
                max("timestamp"),
                (array_agg(id ORDER BY "timestamp" DESC, id DESC))[1]
            FROM meters_meterevent
            WHERE cancelled_at IS NULL AND NOT superseded
            GROUP BY 1, 2, 3
            """
        )
        cursor.execute("ANALYZE meters_meterevent")
        cursor.execute("ANALYZE meters_usagerollup")
    print(f"Loaded in {time.perf_counter() - started:.0f} s.", flush=True)

    def per_unit(meter: Meter, unit_amount_decimal: Decimal) -> Price:
        return services.price_create(
            actor=None,
            currency="usd",
            usage_type=Price.UsageType.METERED,
            pricing_model="per_unit",
            meter=meter,
            unit_amount_decimal=unit_amount_decimal,
        )

    prices = [
        per_unit(meters[0], Decimal("0.1")),
        services.price_create(
            actor=None,
            currency="usd",
            usage_type=Price.UsageType.METERED,
            pricing_model="package",
            meter=meters[2],
            unit_amount_decimal=Decimal(4),
            package_size=1000,
        ),
        services.price_create(
            actor=None,
            currency="usd",
            usage_type=Price.UsageType.METERED,
            pricing_model="graduated",
            meter=meters[1],
            tiers=[
                Tier(100_000, Decimal(0)),
                Tier(1_000_000, Decimal("0.5"), Decimal(10_000)),
                Tier(None, Decimal("0.25")),
            ],
        ),
        services.price_create(
            actor=None,
            currency="usd",
            usage_type=Price.UsageType.METERED,
            pricing_model="volume",
            meter=meters[3],
            tiers=[Tier(10_000, Decimal(2)), Tier(100_000, Decimal(1)), Tier(None, Decimal("0.5"))],
        ),
        per_unit(meters[4], Decimal(1500)),
    ]
    subscription = services.subscription_create(
        actor=None,
        customer=big,
        items=[services.ItemInput(price=p) for p in prices],
        interval="month",
        start_date=anchor,
    )
    services.credit_grant_create(actor=None, customer=big, amount=50_000, currency="usd")
    return subscription


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def timed(label: str, action: object) -> None:
    assert callable(action)
    for _ in range(WARMUP):
        action()
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    print(
        f"{label}: p50 {percentile(samples, 50):.1f} ms, p95 {percentile(samples, 95):.1f} ms, "
        f"max {max(samples):.1f} ms ({RUNS} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reload", action="store_true", help="load the data again")
    args = parser.parse_args()
    check_database()
    call_command("migrate", verbosity=0)
    subscription = None if args.reload else current_subscription()
    if subscription is None:
        subscription = load()
    customer = subscription.customer
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM meters_meterevent")
        (events,) = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM meters_usagerollup")
        (rollups,) = cursor.fetchone()
    print(f"Events stored: {events:,}; hourly rollups: {rollups:,}")

    now = datetime.now(UTC)
    estimate = subscription_estimate(subscription=subscription, now=now)
    assert estimate is not None
    for row in estimate.lines:
        line = row.line
        assert line.meter is not None
        (raw,) = meter_event_summaries(
            meter=line.meter,
            customer=customer,
            start=estimate.period.start,
            end=estimate.period.end,
            from_events=True,
        )
        assert max(raw.aggregated_value, Decimal(0)) == line.quantity, (line, raw)
        print(
            f"  {line.meter.event_name:15} {line.price.pricing_model:9} quantity "
            f"{line.quantity:>12,} ({raw.event_count:,} events) amount {line.amount:>12,}"
        )
    print(
        f"Estimate: subtotal {estimate.subtotal:,}, credits {estimate.credits_applied:,}, "
        f"total {estimate.total:,} (cents); checked against raw events."
    )

    timed("subscription_estimate (selector)", lambda: subscription_estimate(
        subscription=subscription, now=datetime.now(UTC)
    ))  # fmt: skip

    setup_test_environment()
    user, _ = User.objects.get_or_create(username="bench-support")
    client = Client()
    client.force_login(user)
    user.is_superuser = True
    user.save()
    url = f"/billing/customers/{customer.pk}/estimate/"

    def request() -> None:
        response = client.get(url, headers={"HX-Request": "true"})
        assert response.status_code == 200, response.status_code

    timed("GET estimate partial (server round trip)", request)


if __name__ == "__main__":
    main()
