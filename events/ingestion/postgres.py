"""The PostgreSQL store: the staged writer (per-event path and windowed meters) and the COPY
writer (events in columns).

Receipt order. Event ids are allocated in input order (from the sequence before the insert),
so "most recently received" means the greatest id, also within one batch.

Concurrency. Events are inserted in identifier order with
``ON CONFLICT (identifier) DO NOTHING``; whatever was not inserted is compared with the
committed row. Rollups of raw meters are then upserted in sorted (meter, customer, hour)
order, which takes their row locks in that order. For windowed meters one rollup row per
(meter, customer, window start) is first created if missing and locked with ``FOR UPDATE``
in sorted key order, before supersession and rollups of the window are recomputed
(``rollups``). Cancellation locks every affected rollup key the same way, in the same order,
before it touches the events (``cancellation``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from django.db import connection, transaction

from events.ingestion.columns import Accepted
from events.ingestion.dedup import StoredRow
from events.ingestion.lookups import chunks
from events.ingestion.rollups import (
    WindowsDecision,
    pg_lock,
    pg_rollups_merge,
    pg_windows_recompute,
    window_of,
)
from events.ingestion.rules import Candidate
from events.models import EventBatch
from meters.models import Meter
from usage_portal import arrow

_PROBE_SAMPLE = 256  # identifiers in the sample probe for already stored events
_STAGE_COLUMNS = "id, identifier, meter_id, customer_id, ts, value, payload, line, lock_hour, rend"


# --- The staged writer: COPY into a staging table, set-based insert and rollups -------------
def staged_write(
    candidates: list[Candidate], batch: EventBatch, now: datetime
) -> dict[int, StoredRow]:
    """Insert the new events; return {candidate index: stored row} for identifiers taken."""
    if not candidates:
        return {}
    with connection.cursor() as cursor:
        # Identifiers already stored (a re-sent file) cost no id, no staging row and no
        # conflicting insert. Whatever the probe misses (or a concurrent batch commits
        # meanwhile) is still caught by ON CONFLICT below: the probe only saves work.
        existing: dict[int, StoredRow] = {}
        stored = probe(cursor, [c.identifier for c in candidates])
        if stored:
            existing = {c.index: stored[c.identifier] for c in candidates if c.identifier in stored}
            candidates = [c for c in candidates if c.identifier not in stored]
            if not candidates:
                return existing
        lock_parents(
            cursor,
            meter_ids={c.meter.pk for c in candidates},
            customer_ids={c.customer_id for c in candidates},
            batch_id=batch.pk,
        )
        ids = event_ids(cursor, len(candidates))
        by_id: dict[int, Candidate] = {}
        for candidate, event_id in zip(candidates, ids, strict=True):
            candidate.event_id = event_id
            by_id[event_id] = candidate
        _stage(cursor, candidates)
        if _insert_staged(cursor, batch, now, by_id, existing):
            _staged_rollups(cursor)
        cursor.execute("DROP TABLE IF EXISTS meter_event_stage")
    return existing


def _stage(cursor: Any, candidates: list[Candidate]) -> None:
    cursor.execute("DROP TABLE IF EXISTS meter_event_stage")
    cursor.execute(
        "CREATE TEMP TABLE meter_event_stage (id bigint, identifier text, meter_id bigint, "
        "customer_id bigint, ts timestamptz, value numeric, payload jsonb, line integer, "
        "lock_hour timestamptz, rend timestamptz, windowed boolean) ON COMMIT DROP"
    )
    with cursor.copy(f"COPY meter_event_stage ({_STAGE_COLUMNS}, windowed) FROM STDIN") as copy:
        for chunk in chunks(candidates, 5000):
            copy.write("".join(_copy_line(candidate) for candidate in chunk))


def _insert_staged(
    cursor: Any,
    batch: EventBatch,
    now: datetime,
    by_id: dict[int, Candidate],
    existing: dict[int, StoredRow],
) -> int:
    """Insert the staged events; add the identifiers already taken to ``existing`` (and
    drop them from the stage). Return how many were inserted."""
    # Sorted by identifier so that two batches sharing identifiers wait, never deadlock.
    cursor.execute(
        "INSERT INTO meters_meterevent (id, identifier, meter_id, customer_id, timestamp, "
        "value, payload, batch_id, line, received_at, superseded) "
        "SELECT id, identifier, meter_id, customer_id, ts, value, payload, %s, line, %s, "
        'false FROM meter_event_stage ORDER BY identifier COLLATE "C" '
        "ON CONFLICT (identifier) DO NOTHING",
        [batch.pk, now],
    )
    inserted: int = cursor.rowcount
    if inserted < len(by_id):
        # Identifiers already taken: compare with the committed rows, drop from the stage.
        cursor.execute(
            "DELETE FROM meter_event_stage s USING meters_meterevent e "
            "WHERE e.identifier = s.identifier AND e.id <> s.id "
            "RETURNING s.id, e.meter_id, e.customer_id, e.timestamp, e.value"
        )
        existing.update((by_id[row[0]].index, tuple(row[1:])) for row in cursor.fetchall())
    return inserted


def _staged_rollups(cursor: Any) -> None:
    """The rollups of the staged events that were inserted."""
    # Windowed meters re-decide a whole window: lock it first. Raw meters need no separate
    # lock: the sorted upsert below takes its row locks in key order.
    pg_lock(
        cursor,
        "SELECT DISTINCT meter_id, customer_id, lock_hour FROM meter_event_stage WHERE windowed",
    )
    pg_rollups_merge(
        cursor,
        "SELECT meter_id, customer_id, lock_hour, value, ts, id FROM meter_event_stage "
        "WHERE NOT windowed",
    )
    cursor.execute("DROP TABLE IF EXISTS meter_rollup_ranges")
    cursor.execute(
        "CREATE TEMP TABLE meter_rollup_ranges ON COMMIT DROP AS "
        "SELECT DISTINCT meter_id, customer_id, lock_hour AS rstart, rend "
        "FROM meter_event_stage WHERE windowed"
    )
    pg_windows_recompute(cursor)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")


def _copy_text(text: str) -> str:
    return text.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(text) else text


def _copy_line(candidate: Candidate) -> str:
    """One staging row in COPY's text format: tab-separated, backslash escapes, \\N null."""
    iso = candidate.timestamp.isoformat()  # UTC, whole seconds: 2026-03-10T12:30:05+00:00
    if candidate.meter.event_time_window:
        window_start, window_end = window_of(candidate.meter, candidate.timestamp)
        lock, end, windowed = window_start.isoformat(), window_end.isoformat(), "t"
    else:
        lock, end, windowed = iso[:13] + ":00:00+00:00", "\\N", "f"
    line = "\\N" if candidate.line is None else candidate.line
    return (
        f"{candidate.event_id}\t{_copy_text(candidate.identifier)}\t"
        f"{candidate.meter.pk}\t{candidate.customer_id}\t{iso}\t{candidate.value}\t"
        f"{_copy_text(candidate.payload_json)}\t{line}\t{lock}\t{end}\t"
        f"{windowed}\n"
    )


# --- The COPY writer: events in columns straight into the events table ------------------------
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
    event time window (``hour`` or ``day``): their windows are decided from the new events
    (``rollups.WindowsDecision``) under the windows' locks."""
    count = len(accepted.positions)
    if not count:
        return {}
    with connection.cursor() as cursor:
        existing, new = accepted.stored_split(probe(cursor, accepted.identifiers))
        if not new:
            return existing
        accepted.payloads_fill(new)
        lock_parents(
            cursor,
            meter_ids={accepted.meter_ids[p] for p in new},
            customer_ids={accepted.customer_ids[p] for p in new},
            batch_id=batch.pk,
        )
        with ids_in_turn():
            ids = event_ids(cursor, len(new))  # ascending, in input order: receipt order
        ids_at = [0] * count
        for position, event_id in zip(new, ids, strict=True):
            ids_at[position] = event_id
        decision = WindowsDecision(windows, accepted, new, ids)
        superseded = set(decision.losers)  # whatever was stored before: not the last of the new
        # In identifier order: the unique index is filled in order, and two batches sharing
        # identifiers wait for each other instead of deadlocking.
        new.sort(key=accepted.identifiers.__getitem__)
        copy_text = _copy_rows(accepted, new, ids_at, batch, now, source_lines, superseded)
        savepoint = transaction.savepoint()
        try:
            with cursor.copy(
                "COPY meters_meterevent (id, identifier, meter_id, customer_id, timestamp, "
                "value, payload, batch_id, received_at, line, superseded) FROM STDIN"
            ) as copy:
                copy.write(copy_text)
        except psycopg.errors.UniqueViolation:
            # Another batch stored some of these identifiers meanwhile: the staged path
            # compares each with the stored event.
            transaction.savepoint_rollback(savepoint)
            return existing | _columns_write_staged(accepted, new, batch, now, source_lines)
        transaction.savepoint_commit(savepoint)
        if decision.keys:
            _windows_settle(cursor, decision)
        pg_rollups_merge(
            cursor,
            "SELECT meter_id, customer_id, date_trunc('hour', timestamp, 'UTC'), value, "
            "timestamp, id FROM meters_meterevent WHERE id BETWEEN %s AND %s AND batch_id = %s "
            "AND NOT superseded",
            [ids[0], ids[-1], batch.pk],
        )
    return existing


def _windows_settle(cursor: Any, decision: WindowsDecision) -> None:
    """Lock the windows of ``decision`` (one rollup row per window start, in key order, as
    the staged path does), compare each new winner with the window's stored one, supersede
    whichever loses and empty the hour of a stored winner that lost."""
    losers_before = set(decision.losers)
    columns = list(zip(*decision.ranges(), strict=True))
    windows = (
        "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]) "
        "WITH ORDINALITY AS k (meter_id, customer_id, first, after, n)"
    )
    params = [list(column) for column in columns]
    pg_lock(cursor, f"SELECT meter_id, customer_id, to_timestamp(first) FROM ({windows}) k", params)
    # One index probe per window (LATERAL, fenced by OFFSET 0): as a join, the planner
    # knows the arrays' lengths and prefers a parallel scan of every rollup (10x slower).
    cursor.execute(
        f"SELECT k.n - 1, r.id, r.last_event_id FROM ({windows}) k CROSS JOIN LATERAL ("
        "SELECT id, last_event_id FROM meters_usagerollup r "
        "WHERE r.meter_id = k.meter_id AND r.customer_id = k.customer_id "
        "AND r.hour >= to_timestamp(k.first) AND r.hour < to_timestamp(k.after) "
        "AND r.event_count > 0 OFFSET 0) r",
        params,
    )
    superseded, emptied = decision.settle(cursor.fetchall())
    superseded += decision.losers - losers_before  # new winners a later stored one beat
    if superseded:
        cursor.execute(
            "UPDATE meters_meterevent SET superseded = true WHERE id = ANY(%s)", [superseded]
        )
    if emptied:
        cursor.execute(
            "UPDATE meters_usagerollup SET value_sum = 0, event_count = 0, last_value = NULL, "
            "last_timestamp = NULL, last_event_id = NULL WHERE id = ANY(%s)",
            [emptied],
        )


def _copy_rows(
    accepted: Accepted,
    positions: list[int],
    ids_at: list[int],
    batch: EventBatch,
    now: datetime,
    source_lines: list[int],
    superseded: set[int],
) -> memoryview:
    """The COPY text (PostgreSQL's text format) of the new events at ``positions``, in that
    order, those with ids in ``superseded`` marked so: built column by column in Arrow, so no
    Python string is made per row."""
    order = arrow.int64s(positions)

    def column(values: list[Any], kind: pa.DataType) -> pa.Array:
        return arrow.of(values, kind).take(order)

    def escaped(texts: pa.Array) -> pa.Array:
        for special, escape in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
            texts = pc.replace_substring(texts, special, escape)
        return texts

    lines = [source_lines[position] for position in accepted.positions]
    ends = arrow.text("f\n")
    if superseded:
        ends = column(["t\n" if i in superseded else "f\n" for i in ids_at], pa.string())
    text = pc.binary_join_element_wise(
        column(ids_at, pa.int64()).cast(pa.string()),
        escaped(column(accepted.identifiers, pa.string())),
        column(accepted.meter_ids, pa.int64()).cast(pa.string()),
        column(accepted.customer_ids, pa.int64()).cast(pa.string()),
        column(accepted.timestamps, pa.int64()).cast(pa.timestamp("s", tz="UTC")).cast(pa.string()),
        column(accepted.values, pa.string()),
        escaped(column(accepted.payloads, pa.string())),
        arrow.text(str(batch.pk)),
        arrow.text(now.isoformat()),
        column(lines, pa.int64()).cast(pa.string()),
        ends,  # superseded, and the row's end
        arrow.text("\t"),
    )
    # A string array's values lie end to end in its data buffer: that is the whole text.
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset :][: len(text) + 1]
    return memoryview(text.buffers()[2])[offsets[0] : offsets[-1]]


def _columns_write_staged(
    accepted: Accepted,
    positions: list[int],
    batch: EventBatch,
    now: datetime,
    source_lines: list[int],
) -> dict[int, StoredRow]:
    meters = Meter.objects.in_bulk({accepted.meter_ids[position] for position in positions})
    candidates = [
        Candidate(
            index=position,
            identifier=accepted.identifiers[position],
            meter=meters[accepted.meter_ids[position]],
            customer_id=accepted.customer_ids[position],
            timestamp=datetime.fromtimestamp(accepted.timestamps[position], tz=UTC),
            timestamp_given=True,
            value=Decimal(accepted.values[position]),
            payload=json.loads(accepted.payloads[position]),
            line=source_lines[accepted.positions[position]],
        )
        for position in sorted(positions)
    ]
    return staged_write(candidates, batch, now)


# --- Shared steps -------------------------------------------------------------------------------
def lock_parents(
    cursor: Any, *, meter_ids: Iterable[int], customer_ids: Iterable[int], batch_id: int
) -> None:
    """Lock the meters, customers and batch the new rows refer to, FOR KEY SHARE, as a
    foreign key check would: one statement per table instead of one query per row (events
    and rollups carry no FOREIGN KEY constraints, see HOT_PATH_FK in events/models.py)."""
    for table, ids in (
        ("meters_meter", sorted(meter_ids)),
        ("meters_customer", sorted(customer_ids)),
        ("meters_eventbatch", [batch_id]),
    ):
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE id = ANY(%s) "
            "ORDER BY id FOR KEY SHARE) locked",
            [ids],
        )
        if cursor.fetchone()[0] != len(ids):  # pragma: no cover - nothing deletes them
            raise RuntimeError(f"A row of {table} referred to by new events is gone.")


def probe(cursor: Any, identifiers: list[str]) -> dict[str, StoredRow]:
    """The stored content of those of ``identifiers`` already taken (a re-sent file). A sample
    probe first, so that new identifiers do not pay for a full probe that finds nothing;
    whatever it misses is still caught by the insert's unique index."""
    step = max(1, len(identifiers) // _PROBE_SAMPLE)
    stored: dict[str, StoredRow] = {}
    for probed in (identifiers[::step], identifiers) if step > 1 else (identifiers,):
        cursor.execute(
            "SELECT identifier, meter_id, customer_id, timestamp, value FROM meters_meterevent "
            "WHERE identifier = ANY(%s::text[])",
            [probed],
        )
        stored = {row[0]: tuple(row[1:]) for row in cursor.fetchall()}
        if not stored:
            break
    return stored


_event_sequence: str | None = None  # the id sequence's name, looked up once


def event_ids(cursor: Any, count: int) -> list[int]:
    """``count`` new event ids from the sequence, ascending. Usually they are one contiguous
    run (no other session drew ids meanwhile): then only its ends cross the wire."""
    global _event_sequence
    if _event_sequence is None:
        cursor.execute("SELECT pg_get_serial_sequence('meters_meterevent', 'id')")
        _event_sequence = str(cursor.fetchone()[0]).replace("'", "''")
    cursor.execute(
        f"WITH drawn AS (SELECT nextval('{_event_sequence}'::regclass) AS id "
        "FROM generate_series(1, %s)) SELECT min(id), max(id), CASE WHEN "
        "max(id) - min(id) + 1 = count(*) THEN NULL ELSE array_agg(id ORDER BY id) END "
        "FROM drawn",
        [count],
    )
    low, high, scattered = cursor.fetchone()
    return list(range(low, high + 1)) if scattered is None else sorted(scattered)
