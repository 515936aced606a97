"""The SQLite store (the embedded default): the plain writer (per-event path, windowed meters)
and the set-based writer (events in columns).

Receipt order. Events are created in input order, so their ids follow receipt order: "most
recently received" means the greatest id, also within one batch. SQLite serialises writers
(every transaction begins IMMEDIATE, settings), so no lock order is needed, and the ids a
writer draws from the table's maximum are still free when it inserts them.

The set-based writer (``columns_write``) inserts a chunk's new events with one
``executemany`` of raw SQL and upserts their hourly rollups with one ``INSERT ... ON
CONFLICT ... DO UPDATE`` per chunk. Values are exact decimals stored as text on SQLite, so
the upsert adds them with ``decimal_add``, a Python function registered on the connection
(SQLite's own ``+`` would round through a double). "Last" is the greatest (timestamp, id),
the rule of ``rollups``; timestamps are stored as ``YYYY-MM-DD HH:MM:SS`` text, which sorts
as time does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
from django.db import connection

from events.ingestion.columns import Accepted
from events.ingestion.dedup import StoredRow
from events.ingestion.lookups import stored_by_identifier
from events.ingestion.rollups import WindowsDecision, plain_recompute, window_of
from events.ingestion.rules import Candidate
from events.models import EventBatch, MeterEvent
from usage_portal import arrow

_PROBE_CHUNK = 50_000  # identifiers per probe statement (one JSON parameter, no IN limit)


def plain_write(
    candidates: list[Candidate], batch: EventBatch, now: datetime
) -> dict[int, StoredRow]:
    """Insert the new events; return {candidate index: stored row} for identifiers taken."""
    stored = stored_by_identifier([c.identifier for c in candidates])
    existing = {c.index: stored[c.identifier] for c in candidates if c.identifier in stored}
    new = [c for c in candidates if c.index not in existing]
    if not new:
        return existing
    objects = MeterEvent.objects.bulk_create(
        [
            MeterEvent(
                identifier=c.identifier,
                meter=c.meter,
                customer_id=c.customer_id,
                timestamp=c.timestamp,
                value=c.value,
                payload=c.payload,
                batch=batch,
                line=c.line,
                received_at=now,
            )
            for c in new
        ],
        batch_size=500,
    )
    for candidate, obj in zip(new, objects, strict=True):
        candidate.event_id = obj.pk
    ranges = {(c.meter.pk, c.customer_id, *window_of(c.meter, c.timestamp)) for c in new}
    windowed = {c.meter.pk for c in new if c.meter.event_time_window}
    plain_recompute(ranges, windowed)
    return existing


# --- The set-based writer: events in columns -----------------------------------------------------
_INSERT_EVENTS = (
    "INSERT INTO meters_meterevent (id, identifier, meter_id, customer_id, timestamp, value, "
    "payload, batch_id, line, received_at, superseded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LATER = (
    "last_timestamp IS NULL OR (excluded.last_timestamp, excluded.last_event_id) > "
    "(last_timestamp, last_event_id)"
)
_UPSERT_ROLLUPS = (
    "INSERT INTO meters_usagerollup (meter_id, customer_id, hour, value_sum, event_count, "
    "last_value, last_timestamp, last_event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (meter_id, customer_id, hour) DO UPDATE SET "
    "value_sum = decimal_add(value_sum, excluded.value_sum), "
    "event_count = event_count + excluded.event_count, "
    f"last_value = CASE WHEN {_LATER} THEN excluded.last_value ELSE last_value END, "
    f"last_event_id = CASE WHEN {_LATER} THEN excluded.last_event_id ELSE last_event_id END, "
    f"last_timestamp = CASE WHEN {_LATER} THEN excluded.last_timestamp ELSE last_timestamp END"
)


def decimal_add(first: str, second: str) -> str:
    """Two exact decimals stored as text, added exactly (the rollups' ``value_sum``)."""
    return str(Decimal(first) + Decimal(second))


def columns_write(
    accepted: Accepted,
    batch: EventBatch,
    now: datetime,
    source_lines: list[int],
    ids_in_turn: Callable[[], AbstractContextManager[object]],
    windows: dict[int, str],
) -> dict[int, StoredRow]:
    """Store the new events of ``accepted`` and their rollups; return {position: stored row}
    for the identifiers already taken. ``windows`` maps each windowed meter's id to its
    event time window (``hour`` or ``day``)."""
    count = len(accepted.positions)
    if not count:
        return {}
    with connection.cursor() as cursor:
        existing, new = accepted.stored_split(probe(cursor, accepted.identifiers))
        if not new:
            return existing
        accepted.payloads_fill(new)
        texts = _timestamp_texts([accepted.timestamps[p] for p in new])
        with ids_in_turn():
            cursor.execute("SELECT coalesce(max(id), 0) FROM meters_meterevent")
            first_id = int(cursor.fetchone()[0]) + 1  # ascending, in input order
            ids = range(first_id, first_id + len(new))
            superseded = _windows_decide(accepted, new, ids, windows)
            received = connection.ops.adapt_datetimefield_value(now)
            rows = [
                (
                    event_id,
                    accepted.identifiers[p],
                    accepted.meter_ids[p],
                    accepted.customer_ids[p],
                    text,
                    accepted.values[p],
                    accepted.payloads[p],
                    batch.pk,
                    source_lines[accepted.positions[p]],
                    received,
                    int(event_id in superseded),
                )
                for event_id, p, text in zip(ids, new, texts, strict=True)
            ]
            # In identifier order: the unique index is filled in order.
            rows.sort(key=lambda row: row[1])
            connection.connection.executemany(_INSERT_EVENTS, rows)
        if superseded:  # only the counted ones go into the rollups
            counted = [i for i, event_id in enumerate(ids) if event_id not in superseded]
            _rollups_upsert(
                cursor,
                accepted,
                [new[i] for i in counted],
                [ids[i] for i in counted],
                [texts[i] for i in counted],
            )
        else:
            _rollups_upsert(cursor, accepted, new, ids, texts)
    return existing


def _windows_decide(
    accepted: Accepted, new: list[int], ids: Sequence[int], windows: dict[int, str]
) -> set[int]:
    """Decide the windows of windowed meters that the new events (at positions ``new``, with
    ``ids``) fall in (``rollups.WindowsDecision``): supersede the stored winners they beat,
    empty those winners' hours, and return the ids of the new events that do not count. Ids
    are drawn above every stored one, so each window's last new event counts."""
    if not windows:
        return set()
    decision = WindowsDecision(windows, accepted, new, ids)
    if not decision.keys:
        return set()
    ranges = [
        (meter_id, customer_id, _hour_text(start), _hour_text(end))
        for meter_id, customer_id, start, end in decision.ranges()
    ]
    raw = connection.connection.cursor()
    raw.execute(
        "SELECT w.key, r.id, r.last_event_id FROM json_each(?) w JOIN meters_usagerollup r "
        "ON r.meter_id = json_extract(w.value, '$[0]') "
        "AND r.customer_id = json_extract(w.value, '$[1]') "
        "AND r.hour >= json_extract(w.value, '$[2]') AND r.hour < json_extract(w.value, '$[3]') "
        "WHERE r.event_count > 0",
        [json.dumps(ranges)],
    )
    superseded, emptied = decision.settle(raw.fetchall())
    if superseded:
        raw.execute(
            "UPDATE meters_meterevent SET superseded = 1 "
            "WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps(superseded)],
        )
    if emptied:
        raw.execute(
            "UPDATE meters_usagerollup SET value_sum = '0', event_count = 0, last_value = NULL, "
            "last_timestamp = NULL, last_event_id = NULL "
            "WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps(emptied)],
        )
    return decision.losers


def _hour_text(seconds: int) -> str:
    """Unix seconds as the rollups' stored hour text (UTC)."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _timestamp_texts(timestamps: list[int]) -> list[str]:
    """Unix seconds as SQLite's datetime text (UTC): ``YYYY-MM-DD HH:MM:SS``."""
    return arrow.int64s(timestamps).cast(pa.timestamp("s")).cast(pa.string()).to_pylist()


def _rollups_upsert(
    cursor: Any, accepted: Accepted, new: list[int], ids: Sequence[int], texts: list[str]
) -> None:
    """Add the new events (at positions ``new``, with ``ids`` and timestamp ``texts``) to
    their hourly rollups: one row per (meter, customer, hour), one upsert for the chunk."""
    hours: dict[tuple[int, int, str], list[Any]] = {}
    for position, event_id, text in zip(new, ids, texts, strict=True):
        key = (accepted.meter_ids[position], accepted.customer_ids[position], text[:13])
        value = accepted.values[position]
        hour = hours.get(key)
        if hour is None:
            hours[key] = [Decimal(value), 1, value, text, event_id]
            continue
        hour[0] += Decimal(value)
        hour[1] += 1
        if (text, event_id) > (hour[3], hour[4]):
            hour[2], hour[3], hour[4] = value, text, event_id
    connection.connection.create_function("decimal_add", 2, decimal_add, deterministic=True)
    connection.connection.executemany(
        _UPSERT_ROLLUPS,
        [
            (meter_id, customer_id, hour + ":00:00", str(total), events, last, at, event_id)
            for (meter_id, customer_id, hour), (total, events, last, at, event_id) in sorted(
                hours.items()
            )
        ],
    )


def probe(cursor: Any, identifiers: list[str]) -> dict[str, StoredRow]:
    """The stored content of those of ``identifiers`` already taken (a re-sent file). All of
    them, not a sample first as on PostgreSQL: nothing here catches a missed one on insert,
    and each lookup costs about what the insert's own index check would."""
    stored: dict[str, StoredRow] = {}
    raw = connection.connection.cursor()  # the driver's own: no per-row wrapping, no converters
    for start in range(0, len(identifiers), _PROBE_CHUNK):
        raw.execute(
            "SELECT identifier, meter_id, customer_id, CAST(timestamp AS TEXT), value "
            "FROM meters_meterevent WHERE identifier IN (SELECT value FROM json_each(?))",
            [json.dumps(identifiers[start : start + _PROBE_CHUNK])],
        )
        parse = datetime.fromisoformat
        for identifier, meter_id, customer_id, timestamp, value in raw.fetchall():
            at = parse(timestamp + "+00:00")  # stored as naive UTC
            stored[identifier] = (meter_id, customer_id, at, Decimal(value))
    return stored
