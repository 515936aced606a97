"""Benchmark the customer list search with 100,000 customers (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/up_fa_bench USAGE_PORTAL_VAR_DIR=var/fa-bench \\
        .venv/bin/python bench/customer_search.py [--customers 100000] [--runs 50]

Migrates the database, tops it up to ``--customers`` customers, then times what the list page
runs (``customer_list`` + ``page_of``: one page of 50 plus one row, no COUNT) for searches
that match many rows, a few rows, or none, and prints p50/p95 per search and the query plan
of the no-match search. The database must be a dedicated one whose name contains "bench".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usage_portal.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

if TYPE_CHECKING:
    from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLWrapper

from customers.models import Customer  # noqa: E402
from customers.selectors import customer_list  # noqa: E402
from usage_portal.pagination import page_of  # noqa: E402

SEARCHES = [
    ("(no search)", ""),
    ("common word", "ltd"),
    ("ID prefix", "cus_00012"),
    ("name fragment", "gadget 4242"),
    ("email domain", "@example-17.test"),
    ("no match", "zzzz-none"),
    ("two letters", "qq"),
]
WORDS = ["acme", "globex", "initech", "umbrella", "hooli", "gadget", "widget", "cloud"]


def top_up(target: int) -> None:
    have = Customer.objects.count()
    batch = []
    for number in range(have, target):
        word = WORDS[number % len(WORDS)]
        batch.append(
            Customer(
                external_id=f"cus_{number:08d}",
                name=f"{word.title()} {number} Ltd",
                email=f"billing{number}@example-{number % 500}.test",
            )
        )
        if len(batch) == 5000:
            Customer.objects.bulk_create(batch)
            batch = []
    Customer.objects.bulk_create(batch)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE meters_customer")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    if connection.vendor != "postgresql" or "bench" not in connection.settings_dict["NAME"]:
        sys.exit("Use a dedicated PostgreSQL database whose name contains 'bench'.")
    call_command("migrate", verbosity=0)
    top_up(args.customers)
    pg_version = cast("PostgreSQLWrapper", connection).pg_version  # the vendor check above
    print(f"{Customer.objects.count():,} customers, PostgreSQL {pg_version}")
    print(f"{'search':<16} {'query':<18} {'hits':>5} {'p50 ms':>8} {'p95 ms':>8}")
    for label, query in SEARCHES:
        timings = []
        for _ in range(args.runs):
            started = time.perf_counter()
            page = page_of(customer_list(search=query), number=1, per_page=50)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        p95 = timings[int(len(timings) * 0.95) - 1]
        print(
            f"{label:<16} {query!r:<18} {len(page.items):>5} "
            f"{statistics.median(timings):>8.2f} {p95:>8.2f}"
        )
    sql, params = customer_list(search="zzzz-none")[:51].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        print("\nPlan of the no-match search:")
        for (line,) in cursor.fetchall():
            print("  " + line)


if __name__ == "__main__":
    main()
