"""The daily-rollup refresh on SQLite (the embedded default): ``usage/rollups.py`` explains
what is derived from what; this is how SQLite keeps it without blocking imports.

SQLite has one write lock, which every ingestion transaction needs. So the refresh reads
outside it: the stale markers first, then (later, so it sees every commit those markers
stand for) the hourly rollups of their days, and the daily rows, totals and monthly rows
computed last time. It then takes the write lock only to delete the markers it read (a
marker committed meanwhile has a greater id and is kept, so its day is refreshed again) and
to write what changed: the daily rows and totals of customers and hours whose usage
changed, and the months of those customers, combined from their daily rows (read before
the lock, the changed days as just computed). Refreshes run one at a time (a file lock
beside the database, PostgreSQL's advisory lock here): between a refresh's reads and its
writes no other refresh writes these tables, and ingestion and cancellation only add markers.

Decimals are text on SQLite and added in Python, exactly; timestamps are compared as the
``YYYY-MM-DD HH:MM:SS[.ffffff]`` text SQLite stores, which sorts as time does.
"""

from __future__ import annotations

import datetime as dt
import fcntl
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction

PLAIN_CHUNK = 31  # (meter, day) keys per write transaction

# (value_sum, event_count, last_value, last_timestamp, last_event_id) of a daily or monthly row
_Row = tuple[Decimal, int, Decimal, str, int]
_Total = tuple[Decimal, int, Decimal]  # value_sum, event_count, last_sum


@dataclass
class _Changes:
    """What a chunk of refreshed days changes: rows to upsert (key -> row) or delete (None)."""

    daily: dict[tuple[int, str, int], _Row | None] = field(default_factory=dict)
    totals: dict[tuple[int, str, str], _Total | None] = field(default_factory=dict)
    # (meter, month, customer) -> [(day, old daily row, new daily row)]
    by_month: dict[tuple[int, str, int], list[tuple[str, _Row | None, _Row | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    monthly: dict[tuple[int, str, int], _Row | None] = field(default_factory=dict)


@contextmanager
def _refresh_lock() -> Iterator[None]:
    """One refresh at a time on this machine (the embedded default is one machine)."""
    path = Path(settings.DATABASES["default"]["NAME"]).with_suffix(".refresh.lock")
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def plain_refresh(*, meter_id: int | None, chunk: int) -> int:
    """``usage_days_refresh`` on SQLite; returns how many (meter, day) keys it recomputed."""
    refreshed: set[tuple[int, str]] = set()
    with _refresh_lock():
        while True:
            markers = _stale_keys(meter_id, min(chunk, PLAIN_CHUNK))
            if not markers:
                return len(refreshed)
            changes = _Changes()
            for meter, day, _ in markers:
                _day_changes(meter, day, changes)
            _month_changes(changes)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(
                    "DELETE FROM meters_staleusageday WHERE meter_id = %s AND day = %s "
                    "AND id <= %s",
                    markers,
                )
                _write(cursor, changes)
            refreshed.update((meter, day) for meter, day, _ in markers)


def _stale_keys(meter_id: int | None, limit: int) -> list[tuple[int, str, int]]:
    """Up to ``limit`` stale (meter, day) keys, each with its greatest marker id."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT meter_id, CAST(day AS TEXT), max(id) FROM meters_staleusageday "
            "WHERE %s IS NULL OR meter_id = %s GROUP BY 1, 2 ORDER BY 1, 2 LIMIT %s",
            [meter_id, meter_id, limit],
        )
        return [tuple(row) for row in cursor.fetchall()]


def _later(row: _Row, other: _Row | None) -> bool:
    return other is None or (row[3], row[4]) > (other[3], other[4])


def _day_changes(meter: int, day: str, changes: _Changes) -> None:
    """The day's daily rows and totals from its hourly rollups, where they differ from the
    stored ones; and, per customer whose row changed, the change for its month."""
    start = f"{day} 00:00:00"
    after = f"{dt.date.fromisoformat(day) + dt.timedelta(days=1)} 00:00:00"
    per_customer: dict[int, _Row] = {}
    per_hour: dict[str, _Total] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT customer_id, CAST(hour AS TEXT), value_sum, event_count, last_value, "
            "CAST(last_timestamp AS TEXT), last_event_id FROM meters_usagerollup "
            "WHERE meter_id = %s AND hour >= %s AND hour < %s AND event_count > 0",
            [meter, start, after],
        )
        for customer, hour, total_text, events, last_text, last_at, last_id in cursor:
            total, last_value = Decimal(total_text), Decimal(last_text)
            row = (total, events, last_value, last_at, last_id)
            known = per_customer.get(customer)
            if known is None:
                per_customer[customer] = row
            else:
                later = row if _later(row, known) else known
                per_customer[customer] = (known[0] + total, known[1] + events, *later[2:])
            hourly = per_hour.get(hour, (Decimal(0), 0, Decimal(0)))
            per_hour[hour] = (hourly[0] + total, hourly[1] + events, hourly[2] + last_value)
        old_daily = _rows(
            cursor,
            "SELECT customer_id, value_sum, event_count, last_value, CAST(last_timestamp AS "
            "TEXT), last_event_id FROM meters_meterdailyrollup WHERE meter_id = %s AND day = %s",
            [meter, day],
        )
        cursor.execute(
            "SELECT grain, CAST(start AS TEXT), value_sum, event_count, last_sum "
            "FROM meters_meterusagetotal WHERE meter_id = %s AND start >= %s AND start < %s",
            [meter, start, after],
        )
        old_totals = {
            (grain, at): (Decimal(total), events, Decimal(last_sum))
            for grain, at, total, events, last_sum in cursor.fetchall()
        }
    month = day[:8] + "01"
    for customer in per_customer.keys() | old_daily.keys():
        new, old = per_customer.get(customer), old_daily.get(customer)
        if new != old:
            changes.daily[(meter, day, customer)] = new
            changes.by_month[(meter, month, customer)].append((day, old, new))
    new_totals = {("hour", hour): total for hour, total in per_hour.items()}
    if per_customer:
        rows = per_customer.values()
        new_totals[("day", start)] = (
            sum((row[0] for row in rows), Decimal(0)),
            sum(row[1] for row in rows),
            sum((row[2] for row in rows), Decimal(0)),
        )
    for key in new_totals.keys() | old_totals.keys():
        if new_totals.get(key) != old_totals.get(key):
            changes.totals[(meter, *key)] = new_totals.get(key)


def _rows(cursor: Any, sql: str, params: list[Any]) -> dict[int, _Row]:
    """{customer id: row} of daily or monthly rows selected as (customer_id, value_sum,
    event_count, last_value, last_timestamp, last_event_id)."""
    cursor.execute(sql, params)
    return {
        customer: (Decimal(total), events, Decimal(last_value), last_at, last_id)
        for customer, total, events, last_value, last_at, last_id in cursor.fetchall()
    }


def _month_changes(changes: _Changes) -> None:
    """Each customer-month with a changed day, from its daily rows (the changed days as they
    are now), where it differs from the stored row. Only daily rows are read: at most one
    per customer and day of the month."""
    by_meter_month: dict[tuple[int, str], list[int]] = defaultdict(list)
    for meter, month, customer in changes.by_month:
        by_meter_month[(meter, month)].append(customer)
    with connection.cursor() as cursor:
        for (meter, month), customers in by_meter_month.items():
            after = (dt.date.fromisoformat(month) + dt.timedelta(days=32)).replace(day=1)
            cursor.execute(
                "SELECT customer_id, CAST(day AS TEXT), value_sum, event_count, last_value, "
                "CAST(last_timestamp AS TEXT), last_event_id FROM meters_meterdailyrollup "
                "WHERE meter_id = %s AND day >= %s AND day < %s",
                [meter, month, str(after)],
            )
            days: dict[int, dict[str, _Row | None]] = defaultdict(dict)
            wanted = set(customers)
            for customer, day, total, events, last_value, last_at, last_id in cursor:
                if customer in wanted:
                    days[customer][day] = (
                        Decimal(total),
                        events,
                        Decimal(last_value),
                        last_at,
                        last_id,
                    )
            stored = _rows(
                cursor,
                "SELECT customer_id, value_sum, event_count, last_value, CAST(last_timestamp "
                "AS TEXT), last_event_id FROM meters_metermonthlyrollup "
                "WHERE meter_id = %s AND month = %s",
                [meter, month],
            )
            for customer in customers:
                now = days[customer]
                now.update((day, new) for day, _, new in changes.by_month[(meter, month, customer)])
                row = _combined([row for row in now.values() if row is not None])
                if row != stored.get(customer):
                    changes.monthly[(meter, month, customer)] = row


def _combined(rows: list[_Row]) -> _Row | None:
    """Daily rows combined: their sum and count, and the last of their last events."""
    if not rows:
        return None
    last = max(rows, key=lambda row: (row[3], row[4]))
    total = sum((row[0] for row in rows), Decimal(0))
    return (total, sum(row[1] for row in rows), last[2], last[3], last[4])


_ROW_SET = (
    "value_sum = excluded.value_sum, event_count = excluded.event_count, "
    "last_value = excluded.last_value, last_timestamp = excluded.last_timestamp, "
    "last_event_id = excluded.last_event_id"
)


def _write(cursor: Any, changes: _Changes) -> None:
    """Upsert the changed rows, delete the emptied ones."""
    for table, period, rows in (
        ("meters_meterdailyrollup", "day", changes.daily),
        ("meters_metermonthlyrollup", "month", changes.monthly),
    ):
        cursor.executemany(
            f"INSERT INTO {table} (meter_id, {period}, customer_id, value_sum, event_count, "
            "last_value, last_timestamp, last_event_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT (meter_id, {period}, customer_id) DO UPDATE SET {_ROW_SET}",
            [
                (*key, str(row[0]), row[1], str(row[2]), row[3], row[4])
                for key, row in sorted(rows.items())
                if row is not None
            ],
        )
        cursor.executemany(
            f"DELETE FROM {table} WHERE meter_id = %s AND {period} = %s AND customer_id = %s",
            [key for key, row in sorted(rows.items()) if row is None],
        )
    cursor.executemany(
        "INSERT INTO meters_meterusagetotal (meter_id, grain, start, value_sum, event_count, "
        "last_sum) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (meter_id, grain, start) DO "
        "UPDATE SET value_sum = excluded.value_sum, event_count = excluded.event_count, "
        "last_sum = excluded.last_sum",
        [
            (*key, str(total[0]), total[1], str(total[2]))
            for key, total in sorted(changes.totals.items())
            if total is not None
        ],
    )
    cursor.executemany(
        "DELETE FROM meters_meterusagetotal WHERE meter_id = %s AND grain = %s AND start = %s",
        [key for key, total in sorted(changes.totals.items()) if total is None],
    )
