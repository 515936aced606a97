"""The API's inbox: events stored durably at once, drained into the core in batches.

A 202 from ``/v2/billing/meter_event_stream`` means the request's events are in the inbox
(``StreamRequest``), committed. A meter event create (v1 or v2) that the core's precheck
passes is kept there too, one row with its identifier (``meter_event_keep``), and answered
at once; one the precheck doubts takes the core's full path in the request.

Workers (``stream_drain``) take the oldest undrained requests, up to
``STREAM_DRAIN_EVENTS`` events at a time, hand those with a timestamp to
``meter_events_ingest_columns`` (one batch per key, as a file's chunk) and those without to
``meter_events_ingest``, each with the second they were received as "now" (their accepted
window is the one of their receipt; an identifier sent again without a timestamp is a
duplicate, as on every path), and mark the requests drained
in the same transaction: a worker that dies mid-drain leaves them undrained, and the next
drain stores them once. Events whose content fails validation (unknown customer, timestamp
out of range ...) are recorded as the core records any rejection, with the batch: the
asynchronous error reports Stripe sends later.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import psycopg
from django.conf import settings
from django.contrib.auth.models import User
from django.db import DataError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from psycopg.errors import DivisionByZero

from api.models import ApiKey, IdempotentReply, StreamRequest
from api.services import rows_prune
from customers.models import Customer
from events.ingestion import (
    EventColumns,
    EventInput,
    event_batch_create,
    meter_events_ingest,
    meter_events_ingest_columns,
)
from events.models import EventBatch, MeterEvent
from meters.models import Meter

logger = logging.getLogger(__name__)

DRAIN_SEND_EVERY = 0.5  # a busy API queues a drain at most this often per web process
INBOX_KEEP = timedelta(hours=1)  # drained rows are kept this long (then their events are
# found by identifier among the stored events)


class KeyRevoked(Exception):
    """The key was revoked after this process last read it: nothing was kept."""


def stream_request_store(*, api_key: ApiKey, events: list[dict[str, Any]], now: datetime) -> None:
    """Keep a stream request's events (one INSERT, refused if the key was revoked
    meanwhile: ``KeyRevoked``) and make sure a drain follows."""
    params = _row_params(api_key, now, json.dumps(events), len(events), None)
    with connection.cursor() as cursor:
        cursor.execute(_KEEP_REQUEST, params)
        if cursor.fetchone() is None:
            raise KeyRevoked
    inbox_drain_soon()


def meter_event_keep(
    *,
    api_key: ApiKey,
    event: dict[str, Any],
    meter_id: int,
    customer_ref: str,
    now: datetime,
    reply: tuple[str, str, int, str] | None,
) -> bool:
    """Keep one event that the core's precheck passed, and the reply to its Idempotency-Key
    (``(key, request digest, status, body)``), atomically; then make sure a drain follows.
    False, with nothing kept, when its identifier is taken (stored, or waiting here), the
    meter is no longer active, the customer is not found, the key was revoked or the
    Idempotency-Key was used: the caller then takes the full path, which tells those cases
    apart."""
    identifier = event["identifier"]
    params = _row_params(api_key, now, json.dumps([event]), 1, identifier)
    params += [meter_id, customer_ref, identifier]
    reply_params = None
    if reply is not None:
        reply_params = [api_key.pk, *reply, connection.ops.adapt_datetimefield_value(now)]
    if connection.vendor == "postgresql" and connection.get_autocommit():
        kept = _pg_keep(params, reply_params)
    else:  # SQLite, or inside a transaction already
        kept = _keep(params, reply_params)
    if kept:
        inbox_drain_soon()
    return kept


def _row_params(
    api_key: ApiKey, now: datetime, events: str, count: int, identifier: str | None
) -> list[Any]:
    at = connection.ops.adapt_datetimefield_value(now)
    return [api_key.pk, at, events, count, identifier, api_key.pk]


_INBOX = StreamRequest._meta.db_table
_REPLIES = IdempotentReply._meta.db_table

# One inbox row, if the key is not revoked nor its user deactivated; for one event, also if
# its meter is active, its customer exists and its identifier is not stored (the inbox's
# unique index covers the waiting ones). Built once: the texts are the prepared statements'.
_KEY_LIVE = (
    f"EXISTS (SELECT 1 FROM {ApiKey._meta.db_table} k JOIN {User._meta.db_table} u "
    "ON u.id = k.user_id WHERE k.id = %s AND k.revoked_at IS NULL AND u.is_active)"
)
_ONE_EVENT = (
    f" AND EXISTS (SELECT 1 FROM {Meter._meta.db_table} WHERE id = %s AND status = 'active')"
    f" AND EXISTS (SELECT 1 FROM {Customer._meta.db_table} WHERE external_id = %s)"
    f" AND NOT EXISTS (SELECT 1 FROM {MeterEvent._meta.db_table} WHERE identifier = %s)"
)
_INSERT = (
    f"INSERT INTO {_INBOX} (api_key_id, received_at, events, event_count, identifier) "
    "SELECT %s, %s, %s, %s, %s WHERE {conditions} "
    "ON CONFLICT (identifier) WHERE identifier IS NOT NULL DO NOTHING RETURNING id"
)
_KEEP_REQUEST = _INSERT.format(conditions=_KEY_LIVE)
_KEEP_EVENT = _INSERT.format(conditions=_KEY_LIVE + _ONE_EVENT)
_REPLY_INTO = f"INSERT INTO {_REPLIES} (api_key_id, key, request_digest, status, body, created)"
_REPLY = (
    f"{_REPLY_INTO} VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (api_key_id, key) DO NOTHING RETURNING id"
)
# PostgreSQL: the row and the reply in one statement (one round trip, its own transaction).
# The reply is written only if the row was; a row whose reply was not (its Idempotency-Key
# was used before, with other parameters, since the same ones give the same identifier)
# fails the statement by a division by zero, which undoes both.
_PG_KEEP_WITH_REPLY = f"""
WITH kept AS ({_KEEP_EVENT}),
replied AS (
    {_REPLY_INTO}
    SELECT %s, %s, %s, %s, %s, %s FROM kept
    ON CONFLICT (api_key_id, key) DO NOTHING RETURNING id
)
SELECT (SELECT count(*) FROM kept)
    / CASE WHEN (SELECT count(*) FROM kept) = (SELECT count(*) FROM replied) THEN 1 ELSE 0 END
"""


def _pg_keep(params: list[Any], reply_params: list[Any] | None) -> bool:
    sql, every = _KEEP_EVENT, params
    if reply_params is not None:
        sql, every = _PG_KEEP_WITH_REPLY, params + reply_params
    connection.ensure_connection()
    try:
        # The driver's own cursor (Django's binds parameters on the client): parameters bound
        # by the server, the statement prepared once per connection. Its errors pass through
        # Django's wrapper, which marks a broken connection for closing, as for any query.
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(sql, every, prepare=True)
            found = cursor.fetchone()
    except DataError as error:
        if isinstance(error.__cause__, DivisionByZero):  # nothing kept
            return False
        raise
    return found is not None and bool(found[0])


def _keep(params: list[Any], reply_params: list[Any] | None) -> bool:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_KEEP_EVENT, params)
            if cursor.fetchone() is None:
                raise _NotKept
            if reply_params is not None:
                cursor.execute(_REPLY, reply_params)
                if cursor.fetchone() is None:
                    raise _NotKept
    except _NotKept:
        return False
    return True


class _NotKept(Exception):
    pass


def inbox_drain_soon() -> None:
    """Make sure a drain follows within ``DRAIN_SEND_EVERY``: this process's sender thread
    queues one at once, then at most one more per ``DRAIN_SEND_EVERY`` while writes go on
    (so a busy API sends two messages a second, not one per request). No request waits for
    the broker: its first connection in a process takes a third of a second, and a broker
    that is down costs the requests nothing (the periodic sweep drains the inbox)."""
    global _sender_pid
    if _sender_pid != os.getpid():  # none yet in this process (or it was forked)
        with _sender_lock:
            if _sender_pid != os.getpid():
                threading.Thread(target=_send_loop, name="drain-sender", daemon=True).start()
                _sender_pid = os.getpid()
    _wanted.set()


_wanted = threading.Event()
_sender_lock = threading.Lock()
_sender_pid: int | None = None


def _send_loop() -> None:
    from api.tasks import stream_drain_task

    while True:
        _wanted.wait()
        _wanted.clear()
        try:
            stream_drain_task.apply_async()
        except Exception:  # the events are stored: the periodic sweep drains them
            logger.warning(
                "Could not queue an inbox drain; the periodic sweep will.", exc_info=True
            )
        time.sleep(DRAIN_SEND_EVERY)


def stream_drain(*, max_events: int | None = None, gather: float = 0.0) -> int:
    """Drain the inbox until it is empty; how many events were handed to the core.

    Each drain stores its events as one batch, at a cost of its own (tens of milliseconds),
    so drains are few and large: on PostgreSQL at most ``DRAINS_AT_ONCE`` run at a time
    (a drain queued while they run returns at once, and each running one looks again once
    it has let go; a second one starts only on a backlog of more than one transaction's
    worth, and takes requests the first has not locked), and
    with ``gather`` a drain whose oldest waiting event came less than ``gather`` seconds
    ago waits for the rest of that time first (the workers' drains do, half a second)."""
    limit = max_events or settings.STREAM_DRAIN_EVENTS
    drained = 0
    while (slot := _drain_slot(limit)) is not None:
        try:
            if gather:
                _gathered(gather)
            while True:
                with transaction.atomic():
                    taken = _take(limit)
                    if not taken:
                        break
                    drained += _requests_drain(taken)
        finally:
            _drain_slot_free(slot)
        # Rows kept while this drain held the lock, whose own drain returned at once.
        if not StreamRequest.objects.filter(drained_at__isnull=True).exists():
            break
    return drained


DRAINS_AT_ONCE = 2
_DRAIN_LOCK = 0x5AFE_D2A0  # advisory lock ids of the running drains' slots (PostgreSQL)


def _drain_slot(limit: int) -> int | None:
    """A free drain slot, taken (its lock is this session's until freed), or None. Slots
    after the first only for a backlog of more than ``limit`` events' requests. SQLite has
    one writer at a time anyway: always slot 0."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        for slot in range(DRAINS_AT_ONCE):
            if slot and not _backlog(limit):
                return None
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [_DRAIN_LOCK + slot])
            if cursor.fetchone()[0]:
                return slot
    return None


def _backlog(limit: int) -> bool:
    """Whether more requests wait than one drain transaction takes."""
    undrained = StreamRequest.objects.filter(drained_at__isnull=True).order_by("id")
    return undrained.values("id")[limit // 10 : limit // 10 + 1].exists()


def _drain_slot_free(slot: int) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_DRAIN_LOCK + slot])


def _gathered(gather: float) -> None:
    oldest = (
        StreamRequest.objects.filter(drained_at__isnull=True)
        .order_by("id")
        .values_list("received_at", flat=True)
        .first()
    )
    if oldest is not None:
        age = (timezone.now() - oldest).total_seconds()
        if 0 <= age < gather:
            time.sleep(gather - age)


def inbox_identifier_settle(identifier: str) -> None:
    """Store now the waiting event with ``identifier``, if there is one, so that the core
    compares another event with that identifier against it (duplicate or conflict)."""
    with transaction.atomic():
        waiting = StreamRequest.objects.filter(identifier=identifier, drained_at__isnull=True)
        if connection.vendor == "postgresql":
            waiting = waiting.select_for_update()
        taken = [_Taken(*row) for row in waiting.values_list(*_Taken._fields)]
        if taken:
            _requests_drain(taken)


def inbox_prune(*, now: datetime) -> int:
    """Forget inbox rows drained more than ``INBOX_KEEP`` ago; how many."""
    cutoff = now - INBOX_KEEP
    return rows_prune(StreamRequest, "received_at", cutoff, Q(drained_at__lt=cutoff))


class _Taken(NamedTuple):
    """An inbox row being drained (read as values: a drain takes thousands)."""

    pk: int
    api_key_id: int
    received_at: datetime
    events: str
    event_count: int


def _requests_drain(taken: list[_Taken]) -> int:
    """Store ``taken``'s events through the core (one batch per key) and mark them drained,
    in the caller's transaction; how many events."""
    by_key: dict[int, list[_Taken]] = defaultdict(list)
    for request in taken:
        by_key[request.api_key_id].append(request)
    keys = ApiKey.objects.select_related("user").in_bulk(list(by_key))
    now = timezone.now()
    drained = 0
    for key_id, requests in by_key.items():
        batch = event_batch_create(source=EventBatch.Source.API, user=keys[key_id].user)
        timed, untimed = _split(requests)
        for received, chunk in timed.items():
            # Checked against the accepted window of the second they came, as the reply
            # promised (a drain late by a worker's outage refuses nothing that was in it).
            meter_events_ingest_columns(columns=_columns(chunk), batch=batch, now=received)
        for received, events in untimed.items():
            # No timestamp: the receipt time (to the second, as the core keeps it), and an
            # identifier sent again without one is a duplicate whenever it comes (the core's
            # per-event rule).
            meter_events_ingest(events=events, batch=batch, now=received)
        StreamRequest.objects.filter(pk__in=[r.pk for r in requests]).update(
            drained_at=now, batch=batch
        )
        drained += sum(r.event_count for r in requests)
    return drained


def _take(limit: int) -> list[_Taken]:
    """The oldest undrained requests, up to ``limit`` events, locked (skipping those another
    drain holds, on PostgreSQL)."""
    undrained = StreamRequest.objects.filter(drained_at__isnull=True).order_by("id")
    if connection.vendor == "postgresql":
        undrained = undrained.select_for_update(skip_locked=True)
    taken: list[_Taken] = []
    events = 0
    for row in undrained.values_list(*_Taken._fields)[: max(1, limit // 10)]:
        request = _Taken(*row)
        if taken and events + request.event_count > limit:
            break
        taken.append(request)
        events += request.event_count
    return taken


def _split(
    requests: list[_Taken],
) -> tuple[dict[datetime, list[dict[str, Any]]], dict[datetime, list[EventInput]]]:
    """By the second they were received in: the events with a timestamp (each second one
    call of the columnar core), and those without (one call of the per-event core)."""
    timed: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    untimed: dict[datetime, list[EventInput]] = defaultdict(list)
    for request in requests:
        received = request.received_at.replace(microsecond=0)
        for event in json.loads(request.events):
            if event["timestamp"] is None:
                untimed[received].append(
                    EventInput(
                        event_name=event["event_name"],
                        payload=event["payload"],
                        identifier=event["identifier"] or None,
                    )
                )
            else:
                timed[received].append(event)
    return timed, untimed


def _columns(events: list[dict[str, Any]]) -> EventColumns:
    names: list[str] = []
    timestamps: list[int] = []
    identifiers: list[str] = []
    payloads: list[dict[str, str]] = []
    for event in events:
        names.append(event["event_name"])
        timestamps.append(event["timestamp"])
        identifiers.append(event["identifier"] or "")
        payloads.append(event["payload"])
    keys = sorted({key for payload in payloads for key in payload})
    return EventColumns(
        event_names=names,
        timestamps=timestamps,
        identifiers=identifiers,
        payload={key: [p.get(key, "").strip() for p in payloads] for key in keys},
        lines=list(range(1, len(names) + 1)),
        raws=[
            {"event_name": name, "identifier": identifier, "timestamp": str(at)}
            | {f"payload[{key}]": value for key, value in payload.items()}
            for name, identifier, at, payload in zip(
                names, identifiers, timestamps, payloads, strict=True
            )
        ],  # as an API call's rejections are kept: payload keys bracketed
    )
