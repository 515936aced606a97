"""Daily rollups: the meter overview's fast path, kept off the ingestion hot path.

The meter overview adds up every customer's usage of a meter over a range (about 400
customers per meter-hour on the 10M-event bench), which the hourly ``UsageRollup`` rows make
too slow for ranges of weeks. Two derived tables make it cheap:

- ``MeterDailyRollup`` (meter, customer, UTC day): the day's hourly rollups combined (sum,
  count, and the "last" event by (timestamp, id)). The top customers of a range read one row
  per customer-day instead of up to 24.
- ``MeterUsageTotal`` (meter, hour or day): every customer's usage combined, for the chart
  and the live feed's hourly bars. ``last_sum`` is the sum of each customer's last value in
  that hour or day: what the overview has always shown for "last" meters (billing every
  customer for that window), so it stays as it was.

Both are pure functions of ``UsageRollup``, recomputed per (meter, UTC day) by
``usage_days_refresh``. No event or cancellation can change a rollup outside the UTC day of
its events: hour and day event-time windows lie inside one UTC day.

FRESHNESS. The ingestion core and cancellation call ``usage_days_mark_stale`` inside their
transaction: it appends one ``StaleUsageDay`` row per changed (meter, day) and, after commit,
asks for a refresh of those meters (``usage_days_refresh_enqueue``). The markers are plain
inserts with no unique key, so concurrent imports never wait on each other for them (no hot
row per meter or day); the cost is one small INSERT per batch. Refreshes are coalesced: at
most one per meter is queued at a time (``UsageRefreshQueued``, set after commit, outside
the ingestion transaction), and a queued one waits while its meter's commits keep coming (an
import in progress), up to a bound, so an import's chunks share one refresh instead of each
recomputing the same days again. A refresh recomputes only the (meter, day) keys marked.
On PostgreSQL (Celery, and a beat sweep every minute in case a message was lost) it takes a
transaction-level advisory lock so refreshes run one at a time, deletes a chunk of markers
with ``DELETE ... RETURNING`` and only then recomputes their days from the hourly rollups,
in the same transaction. Under READ COMMITTED every statement after the DELETE sees each
ingestion that committed before it, and a marker committed later is not deleted, so its day
is refreshed again. Deleted markers and new daily rows commit together. SQLite reads before
it takes the one write lock and writes only what changed (``usage/rollups_plain.py``), with
the same guarantee. Hence, at any moment: a day without a marker has daily rows equal to
its hourly rollups.

READERS (``usage/selectors.py``: ``meter_usage_over_time``, ``meter_top_customers``) split
a range into whole UTC days without a marker, read from the daily tables, and the rest --
stale days and partial days at the edges -- read from the hourly rollups. On PostgreSQL they
read in one REPEATABLE READ snapshot (markers, daily rows and rollups of the same moment), so
the overview is always exact; only its speed depends on the refresh having run.
``from_hourly=True`` forces the hourly path: the reference the tests compare with.

The migration that created these tables marked every existing day stale; the first refresh
fills them. ``bench/customer_page.py`` times a full rebuild of 10M events' rollups.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from events.models import UsageRollup
from events.signals import utc_date
from usage.models import (
    StaleUsageDay,
    UsageRefreshQueued,
)
from usage.rollups_plain import plain_refresh
from usage.summaries import last_by_time_sql

# pg_advisory_xact_lock key of the refresh ("mtrday" in ASCII): refreshes run one at a time.
_REFRESH_LOCK = 0x6D7472646179
_DAY = dt.timedelta(days=1)
REFRESH_CHUNK = 500  # markers per refresh transaction


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def usage_days_mark_stale(*, keys: Iterable[tuple[int, dt.datetime | dt.date]]) -> int:
    """Record that the hourly rollups of these (meter pk, time or UTC date) keys changed in
    the current transaction, and queue a refresh of their meters once it commits (unless one
    is queued already). Returns the number of (meter, day) keys marked."""
    days = sorted({(meter_id, utc_date(moment)) for meter_id, moment in keys})
    if not days:
        return 0
    StaleUsageDay.objects.bulk_create(
        [StaleUsageDay(meter_id=meter_id, day=day) for meter_id, day in days], batch_size=1000
    )
    meter_ids = sorted({meter_id for meter_id, _ in days})
    transaction.on_commit(partial(usage_days_refresh_enqueue, meter_ids=meter_ids), robust=True)
    return len(days)


def usage_days_mark_all_stale(*, meter_ids: Iterable[int] | None = None) -> int:
    """Mark every (meter, day) with hourly rollups stale (a full rebuild on the next
    refresh). For data loaded behind the ingestion core's back, such as benchmarks."""
    ids = None if meter_ids is None else list(meter_ids)
    pairs: set[tuple[int, dt.date]]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT meter_id, (hour AT TIME ZONE 'UTC')::date "
                "FROM meters_usagerollup WHERE %s::bigint[] IS NULL OR meter_id = ANY(%s)",
                [ids, ids],
            )
            pairs = set(cursor.fetchall())
    else:
        rollups = UsageRollup.objects.all()
        if ids is not None:
            rollups = rollups.filter(meter_id__in=ids)
        pairs = {(m, h.date()) for m, h in rollups.values_list("meter_id", "hour").distinct()}
    with transaction.atomic():
        return usage_days_mark_stale(keys=pairs)


def usage_days_refresh_enqueue(*, meter_ids: Iterable[int]) -> int:
    """Queue a refresh of each of ``meter_ids`` that has none queued (``UsageRefreshQueued``),
    and note the commit on the queued ones; return how many were queued. Run after the
    marking transaction commits (autocommit)."""
    queued = 0
    now = timezone.now()
    for meter_id in meter_ids:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE usage_refreshqueued SET last_commit_at = %s WHERE meter_id = %s",
                [now, meter_id],
            )
            if cursor.rowcount:
                continue  # a refresh of this meter is queued and has not started
            cursor.execute(
                "INSERT INTO usage_refreshqueued (meter_id, queued_at, last_commit_at) "
                "VALUES (%s, %s, %s) ON CONFLICT (meter_id) DO NOTHING",
                [meter_id, now, now],
            )
            if cursor.rowcount != 1:
                continue  # another commit queued it just now
        _refresh_send(meter_id)
        queued += 1
    return queued


def _refresh_send(meter_id: int) -> None:
    from usage.tasks import usage_days_refresh_task

    usage_days_refresh_task.apply_async(
        kwargs={"meter_id": meter_id}, countdown=settings.USAGE_DAYS_REFRESH_QUIET_SECONDS
    )


def _refresh_deferred(meter_id: int) -> bool:
    """Whether the meter's queued refresh waits a little longer (sent again for later): its
    commits are still coming, and it has not waited the longest it may."""
    flag = UsageRefreshQueued.objects.filter(meter_id=meter_id).first()
    if flag is None:
        return False
    now = timezone.now()
    quiet = dt.timedelta(seconds=settings.USAGE_DAYS_REFRESH_QUIET_SECONDS)
    longest = dt.timedelta(seconds=settings.USAGE_DAYS_REFRESH_MAX_WAIT_SECONDS)
    if now - flag.last_commit_at < quiet and now - flag.queued_at < longest:
        _refresh_send(meter_id)
        return True
    return False


def usage_days_refresh(
    *, meter_id: int | None = None, chunk: int = REFRESH_CHUNK, queued: bool = False
) -> int:
    """Recompute the daily rows (and their months) of every stale (meter, day) of ``meter_id``
    (None: of every meter, the sweep), a chunk per transaction, until none is left; return
    how many distinct (meter, day) keys were recomputed. Idempotent; safe to run
    concurrently (runs queue on a lock) and beside ingestion. ``queued``: the refresh that
    a commit queued (the task), which waits while the meter's commits keep coming."""
    if meter_id is not None:
        if queued and _refresh_deferred(meter_id):
            return 0
        # Started: a commit from now on queues the next refresh.
        UsageRefreshQueued.objects.filter(meter_id=meter_id).delete()
    else:  # the sweep: a flag this old lost its message
        lost = timezone.now() - dt.timedelta(seconds=settings.USAGE_DAYS_REFRESH_LOST_SECONDS)
        UsageRefreshQueued.objects.filter(queued_at__lt=lost).delete()
    if connection.vendor != "postgresql":
        return plain_refresh(meter_id=meter_id, chunk=chunk)
    refreshed: set[tuple[int, dt.date]] = set()
    while True:
        with transaction.atomic():
            keys = _take_stale(chunk, meter_id)
            if not keys:
                return len(refreshed)
            _recompute_postgres(keys)
            refreshed.update(keys)


def _take_stale(chunk: int, meter_id: int | None) -> list[tuple[int, dt.date]]:
    """Delete up to ``chunk`` markers (of ``meter_id``, or of any meter) and return their
    distinct keys. In key order, so that a chunk holds neighbouring days and recomputes
    each month once."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_REFRESH_LOCK])
        cursor.execute(
            "DELETE FROM meters_staleusageday WHERE id IN (SELECT id FROM "
            "meters_staleusageday WHERE %s::bigint IS NULL OR meter_id = %s "
            "ORDER BY meter_id, day, id LIMIT %s) RETURNING meter_id, day",
            [meter_id, meter_id, chunk],
        )
        return sorted(set(cursor.fetchall()))


def _last_sql(column: str) -> str:
    return last_by_time_sql(column, table="r")


def _recompute_postgres(keys: list[tuple[int, dt.date]]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS usage_refresh_keys")
        cursor.execute(
            "CREATE TEMP TABLE usage_refresh_keys ON COMMIT DROP AS SELECT meter_id, day, "
            "(day::timestamp AT TIME ZONE 'UTC') AS rstart, "
            "(day::timestamp AT TIME ZONE 'UTC') + interval '1 day' AS rend "
            "FROM unnest(%s::bigint[], %s::date[]) AS k (meter_id, day)",
            [[meter_id for meter_id, _ in keys], [day for _, day in keys]],
        )
        # Statistics, so the joins below probe the rollup indexes per key; and no JIT: its
        # compile time exceeds the work of a few days' rows.
        cursor.execute("ANALYZE usage_refresh_keys")
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(
            "DELETE FROM meters_meterdailyrollup d USING usage_refresh_keys k "
            "WHERE d.meter_id = k.meter_id AND d.day = k.day"
        )
        cursor.execute(
            "INSERT INTO meters_meterdailyrollup (meter_id, day, customer_id, value_sum, "
            "event_count, last_value, last_timestamp, last_event_id) "
            "SELECT k.meter_id, k.day, r.customer_id, sum(r.value_sum), sum(r.event_count), "
            f"{_last_sql('last_value')}, {_last_sql('last_timestamp')}, "
            f"{_last_sql('last_event_id')} "
            "FROM usage_refresh_keys k JOIN meters_usagerollup r ON r.meter_id = k.meter_id "
            "AND r.hour >= k.rstart AND r.hour < k.rend WHERE r.event_count > 0 "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        cursor.execute(
            "DELETE FROM meters_meterusagetotal t USING usage_refresh_keys k "
            "WHERE t.meter_id = k.meter_id AND t.start >= k.rstart AND t.start < k.rend"
        )
        cursor.execute(
            "INSERT INTO meters_meterusagetotal (meter_id, grain, start, value_sum, "
            "event_count, last_sum) "
            "SELECT r.meter_id, 'hour', r.hour, sum(r.value_sum), sum(r.event_count), "
            "sum(r.last_value) FROM usage_refresh_keys k JOIN meters_usagerollup r "
            "ON r.meter_id = k.meter_id AND r.hour >= k.rstart AND r.hour < k.rend "
            "WHERE r.event_count > 0 GROUP BY 1, 3 "
            "UNION ALL "
            "SELECT d.meter_id, 'day', k.rstart, sum(d.value_sum), sum(d.event_count), "
            "sum(d.last_value) FROM usage_refresh_keys k JOIN meters_meterdailyrollup d "
            "ON d.meter_id = k.meter_id AND d.day = k.day GROUP BY 1, 3"
        )
        # The months of these days, from their daily rows.
        cursor.execute("DROP TABLE IF EXISTS usage_refresh_months")
        cursor.execute(
            "CREATE TEMP TABLE usage_refresh_months ON COMMIT DROP AS SELECT DISTINCT meter_id, "
            "date_trunc('month', day)::date AS month, "
            "(date_trunc('month', day) + interval '1 month')::date AS month_end "
            "FROM usage_refresh_keys"
        )
        cursor.execute("ANALYZE usage_refresh_months")
        cursor.execute(
            "DELETE FROM meters_metermonthlyrollup m USING usage_refresh_months k "
            "WHERE m.meter_id = k.meter_id AND m.month = k.month"
        )
        cursor.execute(
            "INSERT INTO meters_metermonthlyrollup (meter_id, month, customer_id, value_sum, "
            "event_count, last_value, last_timestamp, last_event_id) "
            "SELECT k.meter_id, k.month, r.customer_id, sum(r.value_sum), sum(r.event_count), "
            f"{_last_sql('last_value')}, {_last_sql('last_timestamp')}, "
            f"{_last_sql('last_event_id')} "
            "FROM usage_refresh_months k JOIN meters_meterdailyrollup r "
            "ON r.meter_id = k.meter_id AND r.day >= k.month AND r.day < k.month_end "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        cursor.execute("DROP TABLE usage_refresh_keys")
        cursor.execute("DROP TABLE usage_refresh_months")


def month_of(day: dt.date) -> tuple[dt.date, dt.date]:
    """[first day, first day of the next month) of ``day``'s month."""
    first = day.replace(day=1)
    return first, (first + dt.timedelta(days=32)).replace(day=1)
