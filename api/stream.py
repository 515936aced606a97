"""The v2 event stream: requests stored durably at once, drained into the core in batches.

A 202 from ``/v2/billing/meter_event_stream`` means the request's events are in the inbox
(``StreamRequest``), committed. Workers (``stream_drain``) take the oldest undrained requests,
up to ``STREAM_DRAIN_EVENTS`` events at a time, hand those with a timestamp to
``meter_events_ingest_columns`` (one batch per key, as a file's chunk) and those without to
``meter_events_ingest`` with the request's receipt time as "now" (so an identifier sent again
without a timestamp is a duplicate, as on every path), and mark the requests drained in the
same transaction: a worker that dies mid-drain leaves them undrained, and the next drain stores
them once. Events whose content fails validation (unknown customer, timestamp out of range
...) are recorded as the core records any rejection, with the batch: the asynchronous error
reports Stripe sends later.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from api.models import ApiKey, StreamRequest
from events.ingestion import (
    EventColumns,
    EventInput,
    event_batch_create,
    meter_events_ingest,
    meter_events_ingest_columns,
)
from events.models import EventBatch

DRAIN_SEND_EVERY = 0.5  # a busy stream queues a drain at most this often per web process
_window_ends = 0.0  # this process's current send window (monotonic seconds)
_trailing_sent = False  # whether a drain at the window's end is queued already


def stream_request_store(*, api_key: ApiKey, events: list[dict[str, Any]], now: datetime) -> None:
    """Keep a request's events (one INSERT) and make sure a drain follows within
    ``DRAIN_SEND_EVERY``: the first request of a window queues one at once, a later one a
    single drain at the window's end (so a busy stream sends two messages a second, not one
    per request, and no request waits for the periodic sweep)."""
    StreamRequest.objects.create(
        api_key=api_key, received_at=now, events=json.dumps(events), event_count=len(events)
    )
    global _window_ends, _trailing_sent
    moment = time.monotonic()
    if moment >= _window_ends:
        _window_ends, _trailing_sent = moment + DRAIN_SEND_EVERY, False
        _drain_send(0.0)
    elif not _trailing_sent:
        _trailing_sent = True
        _drain_send(_window_ends - moment)


def _drain_send(countdown: float) -> None:
    from api.tasks import stream_drain_task

    try:
        stream_drain_task.apply_async(countdown=countdown)
    except Exception:  # the events are stored: the periodic sweep drains them
        global _window_ends
        _window_ends = 0.0


def stream_drain(*, max_events: int | None = None) -> int:
    """Drain the inbox until it is empty; how many events were handed to the core."""
    limit = max_events or settings.STREAM_DRAIN_EVENTS
    drained = 0
    while True:
        with transaction.atomic():
            taken = _take(limit)
            if not taken:
                return drained
            by_key: dict[int, list[StreamRequest]] = defaultdict(list)
            for request in taken:
                by_key[request.api_key_id].append(request)
            now = timezone.now()
            for requests in by_key.values():
                batch = event_batch_create(
                    source=EventBatch.Source.API, user=requests[0].api_key.user
                )
                timed, untimed = _split(requests)
                if timed:
                    meter_events_ingest_columns(columns=_columns(timed), batch=batch, now=now)
                for request, events in untimed:
                    # No timestamp: the receipt time, and an identifier sent again without
                    # one is a duplicate whenever it comes (the core's per-event rule).
                    meter_events_ingest(events=events, batch=batch, now=request.received_at)
                StreamRequest.objects.filter(pk__in=[r.pk for r in requests]).update(
                    drained_at=now, batch=batch
                )
                drained += sum(r.event_count for r in requests)


def _take(limit: int) -> list[StreamRequest]:
    """The oldest undrained requests, up to ``limit`` events, locked (skipping those another
    drain holds, on PostgreSQL)."""
    undrained = StreamRequest.objects.filter(drained_at__isnull=True).order_by("id")
    if connection.vendor == "postgresql":
        undrained = undrained.select_for_update(skip_locked=True, of=("self",))
    taken: list[StreamRequest] = []
    events = 0
    for request in undrained.select_related("api_key__user")[: max(1, limit // 10)]:
        if taken and events + request.event_count > limit:
            break
        taken.append(request)
        events += request.event_count
    return taken


def _split(
    requests: list[StreamRequest],
) -> tuple[list[dict[str, Any]], list[tuple[StreamRequest, list[EventInput]]]]:
    """The events with a timestamp (for the columnar core), and per request those without."""
    timed: list[dict[str, Any]] = []
    untimed: list[tuple[StreamRequest, list[EventInput]]] = []
    for request in requests:
        without = []
        for event in json.loads(request.events):
            if event["timestamp"] is None:
                without.append(
                    EventInput(
                        event_name=event["event_name"],
                        payload=event["payload"],
                        identifier=event["identifier"] or None,
                    )
                )
            else:
                timed.append(event)
        if without:
            untimed.append((request, without))
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
