"""Cancellation: events leave their rollups; a batch cancelled whole releases their identifiers.

An event cancelled on its own keeps its identifier; a batch cancelled whole (the revert of
an upload) releases its events' identifiers, in the same UPDATE that cancels them, and
deletes every ``StoredIdentifierSet`` (see ``dedup``). Its rollups stay exact (see
``rollups``): raw meters' hours lose the event, windowed meters' windows are re-decided.
On PostgreSQL cancellation locks every affected rollup key first, in sorted key order, as
ingestion does, and only then touches the events.

Cancellations are audited (``AuditEntry`` for the event, "events.meterevent", or the batch,
"events.eventbatch", named as ``usage_portal.audit.audit_target`` names every object). Rollup
rows with zero events can therefore remain on PostgreSQL; the selectors treat them as empty.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import CharField, F, QuerySet, Value
from django.db.models.functions import Cast, Concat, Substr
from django.utils import timezone

from events.ingestion.dedup import RELEASED_IDENTIFIER, RELEASED_LENGTH, RELEASED_PADDING
from events.ingestion.lookups import IN_CHUNK, chunks
from events.ingestion.rollups import (
    pg_lock,
    pg_rollups_subtract,
    pg_windows_recompute,
    plain_recompute,
    window_of,
)
from events.ingestion.types import EventCancelError
from events.models import EventBatch, MeterEvent, StoredIdentifierSet
from events.signals import usage_changed_announce
from meters.models import Meter
from usage_portal.audit import audit_record
from usage_portal.models import AuditEntry


def meter_event_cancel(
    *, event: MeterEvent, user: AbstractBaseUser, now: datetime | None = None
) -> MeterEvent:
    """Cancel one event; its rollups (and its window, for pre-aggregated meters) stay exact.
    Its identifier stays taken, as on Stripe: sending the event again does not revive it."""
    with transaction.atomic():
        cancelled = _events_cancel(event_ids=[event.pk], batch=None, user=user, now=now)
        if not cancelled:
            raise EventCancelError(
                f"Event {event.identifier} is already cancelled.", code="already_cancelled"
            )
        event.refresh_from_db()
        audit_record(
            target=event,
            action=AuditEntry.Action.CANCEL,
            actor=user,
            changes={"status": ["accepted", "cancelled"]},
        )
    return event


def event_batch_cancel(
    *, batch: EventBatch, user: AbstractBaseUser, now: datetime | None = None
) -> int:
    """Cancel every not yet cancelled event of ``batch`` and release their identifiers (the
    revert of an upload: sending the same events again counts them again); return how many
    were cancelled."""
    with transaction.atomic():
        cancelled = _events_cancel(event_ids=None, batch=batch, user=user, now=now)
        # Which sets held the released identifiers is not recorded: none may be trusted.
        StoredIdentifierSet.objects.all().delete()
        audit_record(
            target=batch,
            action=AuditEntry.Action.CANCEL,
            actor=user,
            changes={"events_cancelled": [0, cancelled]},
        )
    return cancelled


def _events_cancel(
    *,
    event_ids: list[int] | None,
    batch: EventBatch | None,
    user: AbstractBaseUser,
    now: datetime | None,
) -> int:
    now = now or timezone.now()
    params: list[Any]
    release = batch is not None  # a batch cancelled whole releases its identifiers
    if event_ids is not None:
        condition, params = "e.id = ANY(%s)", [event_ids]
        queryset = MeterEvent.objects.filter(pk__in=event_ids)
    else:
        assert batch is not None
        condition, params = "e.batch_id = %s", [batch.pk]
        queryset = MeterEvent.objects.filter(batch=batch)
    if connection.vendor != "postgresql":
        return _plain_cancel(queryset.filter(cancelled_at__isnull=True), user, now, release)
    return _pg_cancel(condition, params, user, now, release)


def _plain_cancel(
    queryset: QuerySet[MeterEvent], user: AbstractBaseUser, now: datetime, release: bool
) -> int:
    rows = list(queryset.values_list("pk", "meter_id", "customer_id", "timestamp"))
    meters = {meter.pk: meter for meter in Meter.objects.filter(pk__in={r[1] for r in rows})}
    cancelled = 0
    changes: dict[str, Any] = {"cancelled_at": now, "cancelled_by": user}
    if release:
        changes["released_identifier"] = F("identifier")
        changes["identifier"] = Substr(  # RELEASED_IDENTIFIER of its id
            Concat(Value("released:"), Cast("id", CharField()), Value(":" + RELEASED_PADDING)),
            1,
            RELEASED_LENGTH,
        )
    for chunk in chunks([r[0] for r in rows], IN_CHUNK):
        cancelled += MeterEvent.objects.filter(pk__in=chunk, cancelled_at__isnull=True).update(
            **changes
        )
    ranges = {(r[1], r[2], *window_of(meters[r[1]], r[3])) for r in rows}
    plain_recompute(ranges, {pk for pk, m in meters.items() if m.event_time_window})
    usage_changed_announce(days={(r[1], r[3]) for r in rows})
    return cancelled


def _pg_cancel(
    condition: str, params: list[Any], user: AbstractBaseUser, now: datetime, release: bool
) -> int:
    """Cancel the not yet cancelled events matching ``condition`` (on ``e``, the events), and
    with ``release`` release their identifiers in the same UPDATE."""
    placeholder = RELEASED_IDENTIFIER.format(id="e.id")
    released = ""
    if release:
        released = f", released_identifier = e.identifier, identifier = {placeholder}"
    keys = (
        "SELECT DISTINCT e.meter_id, e.customer_id, "
        "CASE WHEN m.event_time_window = 'day' THEN date_trunc('day', e.timestamp, 'UTC') "
        "ELSE date_trunc('hour', e.timestamp, 'UTC') END AS hour, "
        "CASE WHEN m.event_time_window = 'day' THEN interval '1 day' ELSE interval '1 hour' "
        "END AS span, m.event_time_window <> '' AS windowed "
        "FROM meters_meterevent e JOIN meters_meter m ON m.id = e.meter_id "
        f"WHERE {condition} AND e.cancelled_at IS NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS meter_cancel_keys")
        cursor.execute(f"CREATE TEMP TABLE meter_cancel_keys ON COMMIT DROP AS {keys}", params)
        # Locks first, then the events: ingestion takes them in the same order.
        pg_lock(cursor, "SELECT meter_id, customer_id, hour FROM meter_cancel_keys")
        cursor.execute("DROP TABLE IF EXISTS meter_cancelled")
        cursor.execute(
            "CREATE TEMP TABLE meter_cancelled (id bigint, meter_id bigint, customer_id bigint, "
            "ts timestamptz, value numeric, windowed boolean) ON COMMIT DROP"
        )
        cursor.execute(
            "WITH done AS (UPDATE meters_meterevent e SET cancelled_at = %s, "
            f"cancelled_by_id = %s{released} WHERE {condition} AND e.cancelled_at IS NULL "
            "RETURNING e.id, e.meter_id, e.customer_id, e.timestamp, e.value, e.superseded) "
            "INSERT INTO meter_cancelled SELECT d.id, d.meter_id, d.customer_id, d.timestamp, "
            "d.value, m.event_time_window <> '' FROM done d JOIN meters_meter m "
            "ON m.id = d.meter_id",
            [now, user.pk, *params],
        )
        cancelled: int = cursor.rowcount
        pg_rollups_subtract(cursor)  # raw meters
        cursor.execute("DROP TABLE IF EXISTS meter_rollup_ranges")
        cursor.execute(
            "CREATE TEMP TABLE meter_rollup_ranges ON COMMIT DROP AS SELECT meter_id, "
            "customer_id, hour AS rstart, hour + span AS rend FROM meter_cancel_keys "
            "WHERE windowed"
        )
        pg_windows_recompute(cursor)  # windowed meters: re-decide the affected windows
        cursor.execute("SELECT DISTINCT meter_id, hour FROM meter_cancel_keys")
        usage_changed_announce(days=cursor.fetchall())
        cursor.execute("DROP TABLE meter_cancel_keys")
        cursor.execute("DROP TABLE meter_cancelled")
    return cancelled
