"""Hourly rollups: kept exact by every writer, in the same transaction as the events.

Rollups. ``UsageRollup`` per (meter, customer, UTC hour) holds the sum and count of the
counted events (not cancelled, not superseded) and the "last" one: the counted event with
the greatest (timestamp, id). Meters with an ``event_time_window`` (hour or day) count only
the most recently received non-cancelled event per (customer, window); the others are
``superseded``. Cancelling that event makes the most recently received non-cancelled event
of its window count again. Rollups are written in the same transaction as the events.
Cancelling events of raw meters subtracts them from their hours and, where the hour's "last"
event was cancelled, reads the hour's new last event; windows of pre-aggregated meters are
recomputed from their events. Either way the rollups stay exact.

Every PostgreSQL writer goes through ``pg_rollups_merge``: new events of raw meters are added
to their hours, recomputed windows replace theirs; both aggregate the same way. SQLite
recomputes the touched ranges in Python (``plain_recompute``), by the same "last" rule.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from events.ingestion.columns import Accepted
from events.ingestion.lookups import IN_CHUNK, chunks
from events.models import MeterEvent, UsageRollup
from meters.models import Meter

RangeKey = tuple[int, int, datetime, datetime]  # meter_id, customer_id, start, end


def window_of(meter: Meter, timestamp: datetime) -> tuple[datetime, datetime]:
    """The lock/recompute range of an event: its hour, or its pre-aggregation window."""
    hour = timestamp.replace(minute=0, second=0, microsecond=0)
    if meter.event_time_window == Meter.TimeWindow.DAY:
        day = hour.replace(hour=0)
        return day, day + timedelta(days=1)
    return hour, hour + timedelta(hours=1)


# --- The "last" event: the greatest (timestamp, id) -------------------------------------------
def _last_first(timestamp: str, event_id: str) -> str:
    """An SQL ORDER BY that puts the "last" event first."""
    return f"{timestamp} DESC, {event_id} DESC"


# The same rule between an hour's last event and a merged-in one.
_LATER = (
    "r.last_timestamp IS NULL OR (EXCLUDED.last_timestamp, EXCLUDED.last_event_id) > "
    "(r.last_timestamp, r.last_event_id)"
)


def _last_key(event: tuple[int, datetime, Decimal]) -> tuple[datetime, int]:
    """The same rule in Python, for (id, timestamp, value)."""
    return event[1], event[0]


# --- Windows decided from new events (the set-based writers) ----------------------------------
_WINDOW_SECONDS: dict[str, int] = {Meter.TimeWindow.HOUR: 3600, Meter.TimeWindow.DAY: 86400}


class WindowsDecision:
    """The windows of windowed meters that a chunk's new events fall in, decided without
    reading the windows' events. Each window holds one counted event (the invariant every
    writer keeps), so the hour's rollup that has events is that event alone, and its
    ``last_event_id`` names it. Of the new events of a window only the most recently
    received (the greatest id) can count: the others are ``losers`` whatever was stored
    before. It counts unless the window's stored winner was received later (on PostgreSQL a
    concurrent batch can draw later ids and commit first); whichever loses is superseded, and
    a stored winner that loses is taken out of its hour by emptying that hour's rollup.

    ``windows`` maps each windowed meter's id to its window; the new events are those of
    ``accepted`` at ``positions``, with ``ids`` (ascending in receipt order)."""

    def __init__(
        self, windows: dict[int, str], accepted: Accepted, positions: list[int], ids: Sequence[int]
    ) -> None:
        winner_of: dict[tuple[int, int, int], int] = {}
        self.losers: set[int] = set()
        for position, event_id in zip(positions, ids, strict=True):
            meter_id = accepted.meter_ids[position]
            window = windows.get(meter_id)
            if window is None:
                continue
            timestamp = accepted.timestamps[position]
            key = (
                meter_id,
                accepted.customer_ids[position],
                timestamp - timestamp % _WINDOW_SECONDS[window],
            )
            earlier = winner_of.get(key)
            if earlier is not None:
                self.losers.add(min(earlier, event_id))
            winner_of[key] = max(earlier or 0, event_id)
        self.keys = sorted(winner_of)
        self.winners = [winner_of[key] for key in self.keys]
        self.lengths = [_WINDOW_SECONDS[windows[meter_id]] for meter_id, _, _ in self.keys]

    def ranges(self) -> list[tuple[int, int, int, int]]:
        """(meter id, customer id, start, end) of each window, in key order (Unix seconds)."""
        return [
            (meter_id, customer_id, start, start + length)
            for (meter_id, customer_id, start), length in zip(self.keys, self.lengths, strict=True)
        ]

    def settle(self, previous: Sequence[tuple[int, int, int]]) -> tuple[list[int], list[int]]:
        """Given (window index, rollup id, last event id) of each rollup row with events in
        the windows, the ids of stored events now superseded and the rollup rows to empty.
        New winners beaten by a later stored one join ``losers``."""
        superseded: list[int] = []
        emptied: list[int] = []
        for index, rollup_id, stored_winner in previous:
            if stored_winner < self.winners[index]:
                superseded.append(stored_winner)
                emptied.append(rollup_id)
            else:
                self.losers.add(self.winners[index])
        return superseded, emptied


# --- PostgreSQL -------------------------------------------------------------------------------
_ROLLUP_COLUMNS = "value_sum, event_count, last_value, last_timestamp, last_event_id"
_ADDED = (
    "value_sum = r.value_sum + EXCLUDED.value_sum, "
    "event_count = r.event_count + EXCLUDED.event_count, "
    f"last_value = CASE WHEN {_LATER} THEN EXCLUDED.last_value ELSE r.last_value END, "
    f"last_event_id = CASE WHEN {_LATER} THEN EXCLUDED.last_event_id ELSE r.last_event_id END, "
    f"last_timestamp = CASE WHEN {_LATER} THEN EXCLUDED.last_timestamp "
    "ELSE r.last_timestamp END"
)
_REPLACED = ", ".join(f"{name} = EXCLUDED.{name}" for name in _ROLLUP_COLUMNS.split(", "))


def pg_rollups_merge(
    cursor: Any, source_sql: str, params: Sequence[Any] = (), *, replace: bool = False
) -> None:
    """Merge events into their hourly rollups. ``source_sql`` selects them as (meter_id,
    customer_id, hour, value, timestamp, id). Added to the hours' rollups, or, with
    ``replace``, replacing them (the source then holds every counted event of those hours).
    One aggregation pass, no join (the planner cannot estimate rows inserted moments ago).
    Upserted in sorted key order, which takes the rollups' row locks in that order."""
    last_first = _last_first("ts", "id")
    cursor.execute(
        f"WITH source (meter_id, customer_id, hour, value, ts, id) AS ({source_sql}) "
        "INSERT INTO meters_usagerollup AS r (meter_id, customer_id, hour, "
        f"{_ROLLUP_COLUMNS}) "
        "SELECT meter_id, customer_id, hour, sum(value), count(*), "
        f"(array_agg(value ORDER BY {last_first}))[1], max(ts), "
        f"(array_agg(id ORDER BY {last_first}))[1] "
        "FROM source GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
        "ON CONFLICT (meter_id, customer_id, hour) DO UPDATE SET "
        + (_REPLACED if replace else _ADDED),
        params,
    )


def pg_lock(cursor: Any, keys_sql: str, params: Sequence[Any] = ()) -> None:
    """Create (if missing) and lock the rollup rows that serialise writers, in key order.
    ``keys_sql`` selects (meter_id, customer_id, hour)."""
    cursor.execute(
        "INSERT INTO meters_usagerollup (meter_id, customer_id, hour, value_sum, event_count) "
        f"SELECT k.*, 0, 0 FROM ({keys_sql}) k ORDER BY 1, 2, 3 "
        "ON CONFLICT (meter_id, customer_id, hour) DO NOTHING",
        params,
    )
    # One index probe and lock per key, in key order (the sorted keys drive a nested loop).
    # As a plain join the planner, which knows an array's length, can hash the whole table.
    cursor.execute(
        f"SELECT r.id FROM (SELECT * FROM ({keys_sql}) k ORDER BY 1, 2, 3) "
        "k (meter_id, customer_id, hour) CROSS JOIN LATERAL (SELECT id FROM meters_usagerollup r "
        "WHERE r.meter_id = k.meter_id AND r.customer_id = k.customer_id AND r.hour = k.hour "
        "FOR UPDATE) r",
        params,
    )


def pg_windows_recompute(cursor: Any) -> None:
    """Re-decide supersession and recompute the rollups of the windows in the temporary
    table ``meter_rollup_ranges`` (meter_id, customer_id, rstart, rend: distinct,
    non-overlapping windows of windowed meters). The caller holds their locks."""
    cursor.execute("SELECT 1 FROM meter_rollup_ranges LIMIT 1")
    if cursor.fetchone() is None:
        return
    in_range = (
        "e.meter_id = g.meter_id AND e.customer_id = g.customer_id "
        "AND e.timestamp >= g.rstart AND e.timestamp < g.rend"
    )
    # The most recently received non-cancelled event of each window counts.
    cursor.execute(
        "UPDATE meters_meterevent e SET superseded = (e.id <> w.winner) FROM ("
        "SELECT g.*, (SELECT max(e.id) FROM meters_meterevent e "
        f"WHERE {in_range} AND e.cancelled_at IS NULL) AS winner "
        "FROM meter_rollup_ranges g) w "
        "WHERE e.meter_id = w.meter_id AND e.customer_id = w.customer_id "
        "AND e.timestamp >= w.rstart AND e.timestamp < w.rend AND e.cancelled_at IS NULL "
        "AND e.superseded <> (e.id <> w.winner)"
    )
    # Hours left without a counted event are emptied; the others are replaced below.
    cursor.execute(
        "UPDATE meters_usagerollup r SET value_sum = 0, event_count = 0, last_value = NULL, "
        "last_timestamp = NULL, last_event_id = NULL FROM meter_rollup_ranges g "
        "WHERE r.meter_id = g.meter_id AND r.customer_id = g.customer_id "
        "AND r.hour >= g.rstart AND r.hour < g.rend AND r.event_count <> 0"
    )
    pg_rollups_merge(
        cursor,
        "SELECT e.meter_id, e.customer_id, date_trunc('hour', e.timestamp, 'UTC'), "
        "e.value, e.timestamp, e.id FROM meters_meterevent e JOIN meter_rollup_ranges g "
        f"ON {in_range} WHERE e.cancelled_at IS NULL AND NOT e.superseded",
        replace=True,
    )
    cursor.execute("DROP TABLE meter_rollup_ranges")


def pg_rollups_subtract(cursor: Any) -> None:
    """Take the cancelled events of raw meters (the temporary table ``meter_cancelled``: id,
    meter_id, customer_id, ts, value, windowed) out of their hours, and find a new "last"
    where the last event was cancelled. Exact, and it reads only those hours' tails."""
    cursor.execute(
        "UPDATE meters_usagerollup r SET value_sum = r.value_sum - c.total, "
        "event_count = r.event_count - c.events FROM (SELECT meter_id, customer_id, "
        "date_trunc('hour', ts, 'UTC') AS hour, sum(value) AS total, count(*) AS events "
        "FROM meter_cancelled WHERE NOT windowed GROUP BY 1, 2, 3) c "
        "WHERE r.meter_id = c.meter_id AND r.customer_id = c.customer_id AND r.hour = c.hour"
    )
    cursor.execute(
        "UPDATE meters_usagerollup r SET (last_value, last_timestamp, last_event_id) = ("
        "SELECT e.value, e.timestamp, e.id FROM meters_meterevent e "
        "WHERE e.meter_id = r.meter_id AND e.customer_id = r.customer_id "
        "AND e.timestamp >= r.hour AND e.timestamp < r.hour + interval '1 hour' "
        "AND e.cancelled_at IS NULL AND NOT e.superseded "
        f"ORDER BY {_last_first('e.timestamp', 'e.id')} LIMIT 1) "
        "WHERE r.last_event_id IN (SELECT id FROM meter_cancelled WHERE NOT windowed)"
    )


# --- Plain (SQLite): recomputed in Python from the raw events ----------------------------------
_Row = tuple[int, datetime, Decimal, bool, int]  # id, timestamp, value, superseded, span
_Bucket = list[tuple[int, datetime, Decimal]]  # an hour's counted (id, timestamp, value)


def plain_recompute(ranges: set[RangeKey], windowed_meters: set[int]) -> None:
    """Recompute supersession (windowed meters) and rollups over ``ranges`` from raw events."""
    by_pair: dict[tuple[int, int], list[tuple[datetime, datetime]]] = defaultdict(list)
    for meter_id, customer_id, start, end in ranges:
        by_pair[(meter_id, customer_id)].append((start, end))
    for (meter_id, customer_id), spans in by_pair.items():
        rows = _plain_events_in(meter_id, customer_id, spans)
        if meter_id in windowed_meters:
            rows = _plain_supersede(rows)
        else:
            rows = [row for row in rows if not row[3]]
        buckets: dict[datetime, _Bucket] = defaultdict(list)
        for event_id, timestamp, value, _, _ in rows:
            buckets[timestamp.replace(minute=0, second=0, microsecond=0)].append(
                (event_id, timestamp, value)
            )
        _plain_rollups_write(meter_id, customer_id, spans, buckets)


def _plain_events_in(
    meter_id: int, customer_id: int, spans: list[tuple[datetime, datetime]]
) -> list[_Row]:
    """The non-cancelled events of the pair inside ``spans``, each with its span's position."""
    found = MeterEvent.objects.filter(
        meter_id=meter_id,
        customer_id=customer_id,
        timestamp__gte=min(start for start, _ in spans),
        timestamp__lt=max(end for _, end in spans),
        cancelled_at__isnull=True,
    ).values_list("id", "timestamp", "value", "superseded")
    rows = []
    for event_id, timestamp, value, superseded in found:
        for position, (start, end) in enumerate(spans):
            if start <= timestamp < end:
                rows.append((event_id, timestamp, value, superseded, position))
                break
    return rows


def _plain_supersede(rows: list[_Row]) -> list[_Row]:
    """Mark all but the most recently received event of each window superseded (and the
    winner not); return the winners."""
    winners: dict[int, int] = {}
    for event_id, _, _, _, position in rows:
        winners[position] = max(winners.get(position, 0), event_id)
    newly_superseded = [row[0] for row in rows if row[0] != winners[row[4]] and not row[3]]
    revived = [row[0] for row in rows if row[0] == winners[row[4]] and row[3]]
    for chunk in chunks(newly_superseded, IN_CHUNK):
        MeterEvent.objects.filter(pk__in=chunk).update(superseded=True)
    for chunk in chunks(revived, IN_CHUNK):
        MeterEvent.objects.filter(pk__in=chunk).update(superseded=False)
    winner_ids = set(winners.values())
    return [row for row in rows if row[0] in winner_ids]


def _plain_rollups_write(
    meter_id: int,
    customer_id: int,
    spans: list[tuple[datetime, datetime]],
    buckets: dict[datetime, _Bucket],
) -> None:
    """Make the pair's rollups inside ``spans`` those of ``buckets`` (counted events by hour)."""
    for start, end in spans:
        UsageRollup.objects.filter(
            meter_id=meter_id, customer_id=customer_id, hour__gte=start, hour__lt=end
        ).exclude(hour__in=list(buckets)).delete()
    current = {
        rollup.hour: rollup
        for rollup in UsageRollup.objects.filter(
            meter_id=meter_id, customer_id=customer_id, hour__in=list(buckets)
        )
    }
    to_create: list[UsageRollup] = []
    to_update: list[UsageRollup] = []
    for hour, events in buckets.items():
        last_id, last_timestamp, last_value = max(events, key=_last_key)
        rollup = current.get(hour) or UsageRollup(
            meter_id=meter_id, customer_id=customer_id, hour=hour
        )
        rollup.value_sum = sum((value for _, _, value in events), Decimal(0))
        rollup.event_count = len(events)
        rollup.last_value = last_value
        rollup.last_timestamp = last_timestamp
        rollup.last_event_id = last_id
        (to_update if rollup.pk else to_create).append(rollup)
    UsageRollup.objects.bulk_create(to_create, batch_size=500)
    UsageRollup.objects.bulk_update(to_update, _ROLLUP_COLUMNS.split(", "), batch_size=500)
