"""The ingestion pipeline: validate, deduplicate, store, report, for one event at a time
(``meter_events_ingest``) or many in columns (``meter_events_ingest_columns``).

Every event is checked by ``rules``, deduplicated by ``dedup`` (within the batch, where the
first valid event wins, then against stored events) and written by the store of the
database (``postgres`` or ``sqlite``) with its rollups (``rollups``), in one transaction.

Dry runs (``batch.dry_run``) validate and deduplicate exactly like real runs (against stored
events and within the batch) and record rejections, but write no events and no rollups.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from events.ingestion import postgres, sqlite
from events.ingestion.batches import rejection_of, rejections_hint
from events.ingestion.columns import Accepted, ColumnsIntake
from events.ingestion.dedup import (
    StoredRow,
    conflict_message,
    content_set_digest,
    identifier_set_digest,
)
from events.ingestion.lookups import (
    context_build,
    context_load,
    meters_named,
    stored_by_identifier,
)
from events.ingestion.postgres import staged_write
from events.ingestion.rules import (
    Candidate,
    Context,
    Rejected,
    accepted_window,
    clean,
    in_window,
    validate,
)
from events.ingestion.sqlite import plain_write
from events.ingestion.types import (
    Code,
    EventColumns,
    EventInput,
    EventResult,
    IngestCounts,
    IngestReport,
    MeterTotal,
    Outcome,
)
from events.models import EventBatch, EventRejection, StoredIdentifierSet
from events.signals import usage_changed_announce
from meters.models import Meter

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch of events is handled.

    A large batch makes hundreds of thousands of short-lived objects (events, candidates,
    results) that die by reference counting once it is done; the collector would traverse
    each of them several times meanwhile (about a quarter of the Python time of a CSV
    chunk, measured) and find nothing. Automatic collection resumes afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- One event at a time ------------------------------------------------------------------------
def meter_events_ingest(
    *, events: Sequence[EventInput], batch: EventBatch, now: datetime | None = None
) -> IngestReport:
    """Validate, deduplicate and store ``events`` as part of ``batch``; see the package doc."""
    with gc_paused():
        return _events_ingest(events, batch, now)


class _Outcomes:
    """One result per input event, in order, and the rejections to record."""

    def __init__(self, events: Sequence[EventInput], batch: EventBatch) -> None:
        self.events, self.batch = events, batch
        self.results: list[EventResult | None] = [None] * len(events)
        self.rejections: list[EventRejection] = []
        self.rejected_at: list[int] = []  # the input index of each rejection
        self.totals: dict[int, MeterTotal] = defaultdict(MeterTotal)

    def reject(self, index: int, code: Code, message: str, param: str, meter: Meter | None) -> None:
        event = self.events[index]
        self.results[index] = EventResult(
            Outcome.REJECTED,
            event.identifier or "",
            code.value,
            message,
            param,
            meter.pk if meter else None,
        )
        self.rejections.append(rejection_of(self.batch, event, code, message, param, meter))
        self.rejected_at.append(index)

    def hint(self) -> None:
        """ "Did you mean …?" for unknown customers that match one ignoring case, in the
        rejections and the results alike."""
        suggestions = rejections_hint(self.rejections)
        for index, rejection in zip(self.rejected_at, self.rejections, strict=True):
            result = self.results[index]
            suggestion = suggestions.get(rejection.customer_ref)
            if result is not None and suggestion and result.code == Code.CUSTOMER_NOT_FOUND:
                message = f"{result.message} Did you mean {suggestion}?"
                self.results[index] = replace(result, message=message)

    def repeated(self, candidate: Candidate, differences: list[str], *, stored: bool) -> None:
        """``candidate``'s identifier was taken (stored, or earlier in the batch)."""
        if differences:
            message = conflict_message(candidate.identifier, differences, stored=stored)
            self.reject(
                candidate.index, Code.DUPLICATE_CONFLICT, message, "identifier", candidate.meter
            )
        else:
            self.results[candidate.index] = EventResult(
                Outcome.DUPLICATE,
                candidate.identifier,
                meter_pk=candidate.meter.pk,
                value=candidate.value,
            )

    def accepted(self, candidate: Candidate) -> None:
        self.results[candidate.index] = EventResult(
            Outcome.ACCEPTED,
            candidate.identifier,
            meter_pk=candidate.meter.pk,
            value=candidate.value,
        )
        total = self.totals[candidate.meter.pk]
        total.event_count += 1
        total.value_sum += candidate.value

    def report(self) -> IngestReport:
        final = [result for result in self.results if result is not None]
        assert len(final) == len(self.events)
        report = IngestReport(batch=self.batch, results=final, totals_by_meter=dict(self.totals))
        for index, result in enumerate(final):
            if result.outcome == Outcome.ACCEPTED:
                report.accepted += 1
            elif result.outcome == Outcome.DUPLICATE:
                report.duplicates += 1
                report.duplicate_rows.append(index)
            else:
                report.rejected += 1
        return report


def _events_ingest(
    events: Sequence[EventInput], batch: EventBatch, now: datetime | None
) -> IngestReport:
    now = (now or timezone.now()).astimezone(UTC)
    outcomes = _Outcomes(events, batch)
    fresh, repeats = _first_valid(events, context_load(events, now), outcomes)
    with transaction.atomic():
        existing = _stored_write(fresh, batch, now)
        for candidate in fresh:
            stored_row = existing.get(candidate.index)
            if stored_row is None:
                outcomes.accepted(candidate)
            else:
                outcomes.repeated(candidate, candidate.differences(*stored_row), stored=True)
        _repeats_settle(repeats, existing, outcomes)
        outcomes.hint()
        EventRejection.objects.bulk_create(outcomes.rejections, batch_size=1000)
        if not batch.dry_run:
            stored = [c for c in fresh if c.index not in existing]
            usage_changed_announce(
                pairs={(c.meter.pk, c.customer_id) for c in stored},
                days={(c.meter.pk, c.timestamp) for c in stored},
            )
    return outcomes.report()


def _first_valid(
    events: Sequence[EventInput], ctx: Context, outcomes: _Outcomes
) -> tuple[list[Candidate], list[tuple[Candidate, Candidate]]]:
    """The valid events, each the first with its identifier in the batch, and the repeats:
    (a later valid event, the first with its identifier). The invalid get their outcome."""
    first_by_identifier: dict[str, Candidate] = {}
    fresh: list[Candidate] = []
    repeats: list[tuple[Candidate, Candidate]] = []
    for index, event in enumerate(events):
        try:
            candidate = validate(index, event, ctx)
        except Rejected as rejected:
            meter = ctx.meters.get(clean(event.event_name))
            outcomes.reject(index, rejected.code, rejected.message, rejected.param, meter)
            continue
        first = first_by_identifier.get(candidate.identifier)
        if first is None:
            first_by_identifier[candidate.identifier] = candidate
            fresh.append(candidate)
        else:
            repeats.append((candidate, first))
    return fresh, repeats


def _repeats_settle(
    repeats: list[tuple[Candidate, Candidate]],
    existing: dict[int, StoredRow],
    outcomes: _Outcomes,
) -> None:
    """Judge each repeat against the stored event when its identifier was stored before (a
    first event refused as a conflict claims no identifier), else against the batch's first
    event with the identifier."""
    for candidate, first in repeats:
        stored_row = existing.get(first.index)
        if stored_row is not None:
            outcomes.repeated(candidate, candidate.differences(*stored_row), stored=True)
            continue
        differences = first.differences(
            candidate.meter.pk, candidate.customer_id, candidate.timestamp, candidate.value
        )
        outcomes.repeated(candidate, differences, stored=False)


def _stored_write(fresh: list[Candidate], batch: EventBatch, now: datetime) -> dict[int, StoredRow]:
    """Store the new events of ``fresh`` (none in a dry run); return {candidate index:
    stored row} for the identifiers already taken."""
    if batch.dry_run:
        stored = stored_by_identifier([c.identifier for c in fresh])
        return {c.index: stored[c.identifier] for c in fresh if c.identifier in stored}
    if connection.vendor == "postgresql":
        return staged_write(fresh, batch, now)
    return plain_write(fresh, batch, now)


# --- Many events in columns (file sources) ------------------------------------------------------
def meter_events_ingest_columns(
    *,
    columns: EventColumns,
    batch: EventBatch,
    now: datetime | None = None,
    ids_in_turn: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> IngestCounts:
    """``meter_events_ingest`` for events in columns: the same validation, deduplication,
    storage and rollups, with counts instead of one result per event. New events go
    straight into the events table, set-based (COPY on PostgreSQL, ``executemany`` on
    SQLite), their rollups upserted once per chunk, the windows of meters with an event time
    window re-decided once per chunk; dry runs take the per-event path.

    ``ids_in_turn`` is entered around drawing the new events' ids: a caller committing
    several chunks of one file at once uses it to keep ids in file order (the tie-break of
    "last" between events with the same timestamp)."""
    with gc_paused():
        now = (now or timezone.now()).astimezone(UTC)
        meters = meters_named(set(columns.event_names))
        if batch.dry_run:
            events = [columns.event_input(index) for index in range(len(columns))]
            report = _events_ingest(events, batch, now)
            return IngestCounts(
                report.accepted,
                report.duplicates,
                report.rejected,
                report.totals_by_meter,
                report.duplicate_rows,
            )
        full_set = _full_set_lookup(columns)
        if full_set is not None and full_set[1] and _still_valid(columns, meters, now):
            return IngestCounts(0, len(columns), 0, {}, list(range(len(columns))))  # all stored
        return _columns_ingest(columns, batch, now, meters, full_set, ids_in_turn)


def _full_set_lookup(columns: EventColumns) -> tuple[str, bool] | None:
    """The digest of the chunk's identifiers, and whether a ``StoredIdentifierSet`` has it:
    then every event was stored before, from events that all passed validation."""
    if not columns.content_addressed or not len(columns):
        return None
    digest = identifier_set_digest(columns.identifiers)
    return digest, StoredIdentifierSet.objects.filter(digest=digest).exists()


def _still_valid(columns: EventColumns, meters: dict[str, Meter], now: datetime) -> bool:
    """Whether events that passed validation before still would: their meters are still
    active and their timestamps still inside the accepted window. (Their customers still
    exist: customers are never deleted; nothing else they were checked by can change.)"""
    if len(meters) != len(set(columns.event_names)) or not all(
        meter.is_active for meter in meters.values()
    ):
        return False
    window = accepted_window(now)
    return in_window(min(columns.timestamps), window) and in_window(max(columns.timestamps), window)


def _columns_ingest(
    columns: EventColumns,
    batch: EventBatch,
    now: datetime,
    meters: dict[str, Meter],
    full_set: tuple[str, bool] | None,
    ids_in_turn: Callable[[], AbstractContextManager[object]],
) -> IngestCounts:
    refs: set[str] = set()
    for key in {meter.customer_mapping_key for meter in meters.values()}:
        refs.update(columns.payload.get(key, ()))
    intake = ColumnsIntake(columns, batch, context_build(now, meters, refs))
    intake.accept()
    counts = intake.counts
    fingerprint, seen = _identifier_set(columns, full_set, intake)
    with transaction.atomic():
        if seen:  # its events all stored before (the same file again): all duplicates
            intake.duplicates_all()
            intake.settle_repeats(stored=True)  # each held by an event stored alike
            intake.accepted = Accepted()
        accepted = intake.accepted
        store = postgres if connection.vendor == "postgresql" else sqlite
        windows = {m.pk: m.event_time_window for m in meters.values() if m.event_time_window}
        stored = store.columns_write(accepted, batch, now, columns.lines, ids_in_turn, windows)
        conflicts = counts.rejected
        intake.settle_stored(stored)
        meter_ids, customer_ids, timestamps, values = _new_events(accepted, stored)
        counts.accepted = len(meter_ids)
        counts.totals_by_meter = _totals(meter_ids, values)
        if fingerprint is not None and not seen and counts.rejected == conflicts:
            StoredIdentifierSet.objects.bulk_create(
                [StoredIdentifierSet(digest=fingerprint, events=len(accepted.positions))],
                ignore_conflicts=True,
            )
        rejections_hint(intake.rejections)
        EventRejection.objects.bulk_create(intake.rejections, batch_size=1000)
        days = set(zip(meter_ids, [ts // 86400 for ts in timestamps], strict=True))
        usage_changed_announce(
            pairs=set(zip(meter_ids, customer_ids, strict=True)),
            days={(meter_pk, date.fromordinal(_EPOCH_ORDINAL + day)) for meter_pk, day in days},
        )
    return counts


def _identifier_set(
    columns: EventColumns, full_set: tuple[str, bool] | None, intake: ColumnsIntake
) -> tuple[str | None, bool]:
    """The digest of the candidates' identifiers and whether a ``StoredIdentifierSet`` has
    it: of the identifiers alone when the source derived them from the content, else (every
    row given its own identifier, none repeated in the chunk) of each identifier with its
    candidate's content, so that only the same events sent again match."""
    accepted = intake.accepted
    if full_set is not None and len(accepted.positions) == len(columns):
        return full_set  # every row is a candidate: the set looked up already
    if not accepted.identifiers:
        return None, False
    if columns.content_addressed:
        digest = identifier_set_digest(accepted.identifiers)
    elif not intake.repeats and all(columns.identifiers):
        digest = content_set_digest(
            accepted.identifiers,
            accepted.meter_ids,
            accepted.customer_ids,
            accepted.timestamps,
            accepted.values,
        )
    else:
        return None, False
    return digest, StoredIdentifierSet.objects.filter(digest=digest).exists()


def _new_events(
    accepted: Accepted, stored: dict[int, StoredRow]
) -> tuple[list[int], list[int], list[int], list[str]]:
    """The meter ids, customer ids, timestamps and values of the candidates just stored."""
    if not stored:  # the usual case: no copies of the columns
        return accepted.meter_ids, accepted.customer_ids, accepted.timestamps, accepted.values
    new = [p for p in range(len(accepted.positions)) if p not in stored]
    return (
        [accepted.meter_ids[p] for p in new],
        [accepted.customer_ids[p] for p in new],
        [accepted.timestamps[p] for p in new],
        [accepted.values[p] for p in new],
    )


def _totals(meter_ids: list[int], values: list[str]) -> dict[int, MeterTotal]:
    values_by_meter: dict[int, list[str]] = defaultdict(list)
    for meter_id, value in zip(meter_ids, values, strict=True):
        values_by_meter[meter_id].append(value)
    return {
        meter_id: MeterTotal(len(values), sum(map(Decimal, values), Decimal(0)))
        for meter_id, values in values_by_meter.items()
    }
