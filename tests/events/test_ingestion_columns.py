"""Events in columns (file sources) end exactly as they would one by one: the same outcomes,
rejections, stored events and rollups, on both databases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from events.ingestion import (
    EventColumns,
    EventInput,
    IngestCounts,
    IngestReport,
    event_batch_create,
    meter_events_ingest,
    meter_events_ingest_columns,
)
from events.models import EventBatch, EventRejection, MeterEvent, StoredIdentifierSet, UsageRollup
from tests.factories import CustomerFactory, MeterFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 30, 45, tzinfo=UTC)
T = int((NOW - timedelta(hours=3)).timestamp())
KEYS = ("stripe_customer_id", "value", "note")

# (event_name, timestamp, identifier, stripe_customer_id, value, note)
ROWS = [
    ("api_calls", T, "a-1", "cus_1", "5", ""),
    ("api_calls", T + 60, "a-2", "cus_1", "2.50", "hello"),
    ("api_calls", T + 60, "a-2", "cus_1", "2.5", ""),  # same content: a duplicate
    ("api_calls", T + 90, "a-2", "cus_2", "2.5", ""),  # same identifier, other content
    ("api_calls", T + 120, "a-3", "cus_404", "1", ""),  # unknown customer
    ("api_calls", T + 120, "a-4", "cus_2", "-1.5", ""),  # valid, not the plain form
    ("api_calls", T + 120, "a-5", "cus_2", "1e3", ""),
    ("api_calls", T + 120, "a-6", "cus_2", "abc", ""),  # not a number
    ("api_calls", T + 120, "a-7", "cus_2", "1234567890123456", ""),  # too many digits
    ("api_calls", T + 120, "a-8", "cus_2", "", ""),  # no value
    ("api_calls", T + 120, "a-9", "", "3", ""),  # no customer
    ("api_calls", T - 40 * 86400, "a-10", "cus_1", "3", ""),  # too old
    ("api_calls", T + 86400, "a-11", "cus_1", "3", ""),  # in the future
    ("api_calls", T + 180, "a-12", "cus_1", "4", 'say "hi" \\ bye'),  # escaped payload
    ("api_calls", T + 180, "a-13", "cus_1", "4", "\\u0000"),  # jsonb cannot hold it
    ("api_calls", T + 180, "x" * 101, "cus_1", "4", ""),  # identifier too long
    ("logins", T + 200, "l-1", "cus_1", "", ""),  # count meter: no value needed
    ("logins", T + 200, "l-2", "cus_2", "7", ""),
    ("archived", T + 200, "r-1", "cus_1", "1", ""),
    ("nothing", T + 200, "n-1", "cus_1", "1", ""),
    ("storage", T + 200, "s-1", "cus_1", "10", ""),
    ("storage", T + 300, "s-2", "cus_1", "12", ""),
    ("api_calls", T + 400, "stored-same", "cus_1", "8", ""),
    ("api_calls", T + 400, "stored-other", "cus_1", "8", ""),
]


def columns_of(rows: list[tuple], first_line: int = 2) -> EventColumns:
    return EventColumns(
        event_names=[row[0] for row in rows],
        timestamps=[row[1] for row in rows],
        identifiers=[row[2] for row in rows],
        payload={key: [row[3 + n] for row in rows] for n, key in enumerate(KEYS)},
        lines=list(range(first_line, len(rows) + first_line)),
        raws=[{"event_name": row[0]} for row in rows],
    )


@dataclass(frozen=True)
class Snapshot:
    """What a batch left behind: its events by identifier, every non-empty rollup, and its
    rejections."""

    events: dict[str, tuple[Any, ...]]
    rollups: dict[tuple[Any, ...], tuple[Any, ...]]
    rejections: list[tuple[Any, ...]]


def snapshot(batch: EventBatch) -> Snapshot:
    events = {
        e.identifier: (e.meter_id, e.customer_id, e.timestamp, e.value, e.payload, e.line)
        for e in MeterEvent.objects.filter(batch=batch)
    }
    rollups = {
        (r.meter_id, r.customer_id, r.hour): (r.value_sum, r.event_count, r.last_value)
        for r in UsageRollup.objects.all()
        if r.event_count
    }
    rejections = sorted(
        (r.line, r.code, r.column, r.message, r.identifier, r.customer_ref)
        for r in EventRejection.objects.filter(batch=batch)
    )
    return Snapshot(events=events, rollups=rollups, rejections=rejections)


def ingested_both_ways(
    rows: list[tuple],
) -> tuple[IngestCounts, Snapshot, IngestReport, Snapshot]:
    """``rows`` ingested in columns (then rolled back), and again one by one: the counts and
    the snapshot of each."""
    with transaction.atomic():
        savepoint = transaction.savepoint()
        batch = event_batch_create(source=EventBatch.Source.CSV)
        counts = meter_events_ingest_columns(columns=columns_of(rows), batch=batch, now=NOW)
        by_columns = snapshot(batch)
        transaction.savepoint_rollback(savepoint)
    batch = event_batch_create(source=EventBatch.Source.CSV)
    columns = columns_of(rows)
    report = meter_events_ingest(
        events=[columns.event_input(index) for index in range(len(rows))], batch=batch, now=NOW
    )
    return counts, by_columns, report, snapshot(batch)


def test_columns_and_single_events_end_the_same(db) -> None:
    api = MeterFactory.create(event_name="api_calls")
    logins = MeterFactory.create(event_name="logins", aggregation_formula="count")
    MeterFactory.create(event_name="storage", aggregation_formula="last")
    archived = MeterFactory.create(event_name="archived")
    archived.status, archived.deactivated_at = "inactive", NOW
    archived.save()
    customers = {ref: CustomerFactory.create(external_id=ref) for ref in ("cus_1", "cus_2")}
    earlier = event_batch_create(source=EventBatch.Source.API)
    meter_events_ingest(
        events=[
            EventInput("api_calls", {"stripe_customer_id": "cus_1", "value": "8.0"}, ident,
                       datetime.fromtimestamp(T + 400 + shift, tz=UTC))
            for ident, shift in (("stored-same", 0), ("stored-other", 5))
        ],
        batch=earlier,
        now=NOW,
    )  # fmt: skip

    counts, by_columns, report, one_by_one = ingested_both_ways(ROWS)

    assert (counts.accepted, counts.duplicates, counts.rejected) == (
        report.accepted,
        report.duplicates,
        report.rejected,
    )
    assert (counts.accepted, counts.duplicates, counts.rejected) == (9, 2, 13)
    assert counts.totals_by_meter == report.totals_by_meter
    assert counts.totals_by_meter[api.pk].value_sum == Decimal("1010.0")
    assert counts.totals_by_meter[logins.pk].event_count == 2
    assert by_columns == one_by_one
    assert by_columns.events["a-12"][4] == {
        "stripe_customer_id": "cus_1",
        "value": "4",
        "note": 'say "hi" \\ bye',
    }
    assert customers["cus_1"].pk == by_columns.events["a-1"][1]


PLAIN_ROWS = [  # every row plain: the chunk is accepted column by column
    ("api_calls", T, "p-1", "cus_1", "5", ""),
    ("logins", T + 10, "p-2", "cus_2", "", "x"),  # count meter: no value, counts 1
    ("storage", T + 20, "p-3", "cus_1", "10.25", ""),
    ("storage", T + 20, "p-4", "cus_1", "7", ""),  # same second: the later row is last
    ("api_calls", T + 3600, "p-5", "cus_2", "0.5", ""),
    ("logins", T + 3700, "p-6", "cus_1", "3", ""),
]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (PLAIN_ROWS, (6, 0, 0)),
        ([*PLAIN_ROWS, ("api_calls", T, "p-1", "cus_1", "5", "")], (6, 1, 0)),  # not plain
        ([*PLAIN_ROWS, ("logins", T, "p-9", "cus_404", "", "")], (6, 0, 1)),  # not plain
    ],
)
def test_a_plain_chunk_ends_as_it_would_one_by_one(
    db, rows: list[tuple], expected: tuple[int, int, int]
) -> None:
    MeterFactory.create(event_name="api_calls")
    MeterFactory.create(event_name="logins", aggregation_formula="count")
    MeterFactory.create(event_name="storage", aggregation_formula="last")
    for ref in ("cus_1", "cus_2"):
        CustomerFactory.create(external_id=ref)

    counts, by_columns, report, one_by_one = ingested_both_ways(rows)

    assert (counts.accepted, counts.duplicates, counts.rejected) == expected
    assert (report.accepted, report.duplicates, report.rejected) == expected
    assert counts.totals_by_meter == report.totals_by_meter
    assert by_columns == one_by_one
    assert by_columns.events["p-2"][3] == Decimal(1)


def test_an_identifier_the_sample_probe_missed_is_still_a_duplicate(db) -> None:
    api = MeterFactory.create(event_name="api_calls")
    CustomerFactory.create(external_id="cus_1")
    rows = [("api_calls", T + n, f"id-{n:04d}", "cus_1", "1", "") for n in range(1000)]
    # Stored before, by another source: one identifier the sample (every third) skips.
    meter_events_ingest(
        events=[columns_of(rows).event_input(1)],
        batch=event_batch_create(source=EventBatch.Source.API),
        now=NOW,
    )

    batch = event_batch_create(source=EventBatch.Source.CSV)
    counts = meter_events_ingest_columns(columns=columns_of(rows), batch=batch, now=NOW)

    assert (counts.accepted, counts.duplicates, counts.rejected) == (999, 1, 0)
    assert MeterEvent.objects.filter(meter=api).count() == 1000
    assert UsageRollup.objects.get(meter=api).event_count == 1000


def test_a_chunk_seen_in_full_is_all_duplicates_without_a_lookup(db) -> None:
    api = MeterFactory.create(event_name="api_calls")
    CustomerFactory.create(external_id="cus_1")
    rows = [("api_calls", T + n, f"csv_{n:032x}_0", "cus_1", "2", "") for n in range(300)]

    def send(rows: list[tuple], now: datetime = NOW) -> tuple[int, int, int]:
        columns = columns_of(rows)
        columns.content_addressed = True
        batch = event_batch_create(source=EventBatch.Source.CSV)
        counts = meter_events_ingest_columns(columns=columns, batch=batch, now=now)
        return counts.accepted, counts.duplicates, counts.rejected

    assert send(rows) == (300, 0, 0)
    assert StoredIdentifierSet.objects.get().events == 300
    assert send(rows) == (0, 300, 0)
    # One row more: a new set, looked up identifier by identifier.
    more = [*rows, ("api_calls", T + 400, "csv_new_0", "cus_1", "2", "")]
    assert send(more) == (1, 300, 0)
    # A conflicting stored event: that set is not recorded, so it is never taken as seen.
    other = [("api_calls", T + 1, "csv_new_0", "cus_1", "3", ""), *rows[2:4]]
    assert send(other) == (0, 2, 1)
    assert send(other) == (0, 2, 1)
    assert not StoredIdentifierSet.objects.filter(events=3).exists()
    assert UsageRollup.objects.get(meter=api).event_count == 301
    # Seen in full, but no longer valid: each row is checked again and refused.
    assert send(rows, now=NOW + timedelta(days=40)) == (0, 0, 300)  # too old now
    api.status, api.deactivated_at = "inactive", NOW
    api.save()
    assert send(rows) == (0, 0, 300)
    codes = set(EventRejection.objects.values_list("code", flat=True))
    assert codes == {
        "duplicate_meter_event_conflict",
        "timestamp_too_far_in_past",
        "archived_meter",
    }


def _sent_with_own_identifiers(rows: list[tuple]) -> tuple[int, int, int]:
    batch = event_batch_create(source=EventBatch.Source.CSV)
    counts = meter_events_ingest_columns(columns=columns_of(rows), batch=batch, now=NOW)
    return counts.accepted, counts.duplicates, counts.rejected


def test_a_chunk_with_its_own_identifiers_sent_again_alike_is_all_duplicates(db) -> None:
    api = MeterFactory.create(event_name="api_calls")
    CustomerFactory.create(external_id="cus_1")
    rows = [("api_calls", T + n, f"inv-{n:04d}", "cus_1", "2", "") for n in range(300)]

    assert _sent_with_own_identifiers(rows) == (300, 0, 0)
    # The chunk's identifiers with their content are recorded: sent again, it is known
    # stored as a whole.
    assert StoredIdentifierSet.objects.get().events == 300
    assert _sent_with_own_identifiers(rows) == (0, 300, 0)
    assert StoredIdentifierSet.objects.count() == 1
    assert MeterEvent.objects.filter(meter=api).count() == 300
    rollup = UsageRollup.objects.get(meter=api)
    assert (rollup.event_count, rollup.value_sum) == (300, Decimal(600))


def test_a_chunk_sent_again_with_one_value_changed_reports_that_rows_conflict(db) -> None:
    api = MeterFactory.create(event_name="api_calls")
    CustomerFactory.create(external_id="cus_1")
    rows = [("api_calls", T + n, f"inv-{n:04d}", "cus_1", "2", "") for n in range(300)]
    assert _sent_with_own_identifiers(rows) == (300, 0, 0)

    changed = list(rows)
    changed[123] = ("api_calls", T + 123, "inv-0123", "cus_1", "5", "")
    batch = event_batch_create(source=EventBatch.Source.CSV)
    counts = meter_events_ingest_columns(columns=columns_of(changed), batch=batch, now=NOW)

    assert (counts.accepted, counts.duplicates, counts.rejected) == (0, 299, 1)
    rejection = EventRejection.objects.get(batch=batch)
    assert rejection.code == "duplicate_meter_event_conflict"
    assert "inv-0123" in rejection.message and "value" in rejection.message
    # Nothing changed, and the changed chunk is not recorded as stored: sent again, its
    # conflict is reported again.
    assert MeterEvent.objects.get(identifier="inv-0123").value == Decimal(2)
    assert _sent_with_own_identifiers(changed) == (0, 299, 1)
    assert _sent_with_own_identifiers(rows) == (0, 300, 0)
    assert UsageRollup.objects.get(meter=api).value_sum == Decimal(600)


def test_a_chunk_repeating_an_identifier_is_still_judged_row_by_row(db) -> None:
    MeterFactory.create(event_name="api_calls")
    CustomerFactory.create(external_id="cus_1")
    rows = [("api_calls", T + n, f"inv-{n:04d}", "cus_1", "2", "") for n in range(10)]
    rows.append(("api_calls", T + 3, "inv-0003", "cus_1", "2", ""))  # the same event again

    assert _sent_with_own_identifiers(rows) == (10, 1, 0)
    assert not StoredIdentifierSet.objects.exists()
    rows[-1] = ("api_calls", T + 3, "inv-0003", "cus_1", "7", "")
    assert _sent_with_own_identifiers(rows) == (0, 10, 1)


def test_blank_identifiers_are_missing_on_both_paths(db) -> None:
    """A blank identifier is no identifier: each such row gets its own, on both paths (a
    plain chunk once took the blanks as one identifier, a conflict between the rows)."""
    MeterFactory(event_name="api_calls")
    CustomerFactory(external_id="cus_1")
    rows = [
        ("api_calls", T, "   ", "cus_1", "5", ""),
        ("api_calls", T + 60, "   ", "cus_1", "7", ""),
    ]

    counts, by_columns, report, one_by_one = ingested_both_ways(rows)

    assert (counts.accepted, counts.duplicates, counts.rejected) == (2, 0, 0)
    assert (report.accepted, report.duplicates, report.rejected) == (2, 0, 0)
    for events in (by_columns.events, one_by_one.events):
        assert len(events) == 2
        assert all(identifier.startswith("evt_") for identifier in events)
    assert by_columns.rollups == one_by_one.rollups


def test_a_payload_key_with_nul_is_refused_on_both_paths(db) -> None:
    MeterFactory(event_name="api_calls")
    CustomerFactory(external_id="cus_1")
    columns = EventColumns(
        event_names=["api_calls"],
        timestamps=[T],
        identifiers=["k-1"],
        payload={"stripe_customer_id": ["cus_1"], "value": ["5"], "no\x00te": ["x"]},
        lines=[2],
        raws=[{"event_name": "api_calls"}],
    )
    batch = event_batch_create(source=EventBatch.Source.CSV)
    counts = meter_events_ingest_columns(columns=columns, batch=batch, now=NOW)
    report = meter_events_ingest(
        events=[columns.event_input(0)],
        batch=event_batch_create(source=EventBatch.Source.CSV),
        now=NOW,
    )

    assert (counts.accepted, counts.duplicates, counts.rejected) == (0, 0, 1)
    assert report.results[0].code == "invalid_payload"
    assert EventRejection.objects.get(batch=batch).code == "invalid_payload"
    assert not MeterEvent.objects.exists()


def test_unstripped_names_and_references_are_found_on_both_paths(db) -> None:
    MeterFactory(event_name="api_calls")
    CustomerFactory(external_id="cus_1")
    rows = [(" api_calls ", T, "u-1", " cus_1 ", "5", "")]

    counts, by_columns, report, one_by_one = ingested_both_ways(rows)

    assert (counts.accepted, counts.duplicates, counts.rejected) == (1, 0, 0)
    assert (report.accepted, report.duplicates, report.rejected) == (1, 0, 0)
    assert by_columns == one_by_one


def superseded_of_all() -> dict[str, bool]:
    return dict(MeterEvent.objects.values_list("identifier", "superseded"))


WINDOW_ROWS = [  # meters with an event time window: the last received event of a window counts
    ("seats", T, "w-1", "cus_1", "5", ""),  # the day of the stored s-early: supersedes it
    ("seats", T + 3600, "w-2", "cus_1", "7", ""),  # same day, later hour: w-1 superseded
    ("seats", T - 60, "w-3", "cus_2", "3", ""),  # received last, earlier in time: counts
    ("seats", T, "w-1", "cus_1", "5", ""),  # a duplicate
    ("seats", T, "w-4", "cus_404", "5", ""),  # unknown customer
    ("hourly", T, "h-1", "cus_1", "2", ""),
    ("hourly", T + 10, "h-2", "cus_1", "4", ""),  # same hour: h-1 superseded
    ("hourly", T + 3600, "h-3", "cus_1", "6", ""),  # the next hour: its own window
    ("hourly", T + 7200, "h-4", "cus_2", "1", ""),  # the hour of the stored h-early
    ("api_calls", T, "a-1", "cus_1", "5", ""),  # a raw meter beside them
    ("api_calls", T + 1, "a-2", "cus_1", "6", ""),
]


def test_windowed_meters_end_as_they_would_one_by_one(db) -> None:
    """Meters with an event time window take the columns path too: each chunk re-decides the
    windows it touches, including those whose winner was stored before."""
    MeterFactory.create(event_name="api_calls")
    MeterFactory.create(event_name="seats", aggregation_formula="last", event_time_window="day")
    MeterFactory.create(event_name="hourly", event_time_window="hour")
    for ref in ("cus_1", "cus_2"):
        CustomerFactory.create(external_id=ref)
    earlier = event_batch_create(source=EventBatch.Source.API)
    meter_events_ingest(
        events=[
            EventInput(name, {"stripe_customer_id": ref, "value": "9"}, ident,
                       datetime.fromtimestamp(at, tz=UTC))
            for name, ref, ident, at in (
                ("seats", "cus_1", "s-early", T - 7200),
                ("seats", "cus_2", "s-other-day", T - 86400),
                ("hourly", "cus_2", "h-early", T + 7200 + 5),
            )
        ],
        batch=earlier,
        now=NOW,
    )  # fmt: skip
    with transaction.atomic():
        savepoint = transaction.savepoint()
        batch = event_batch_create(source=EventBatch.Source.CSV)
        first, second = columns_of(WINDOW_ROWS[:7]), columns_of(WINDOW_ROWS[7:], 9)
        counts = [
            meter_events_ingest_columns(columns=chunk, batch=batch, now=NOW)
            for chunk in (first, second)
        ]
        by_columns, superseded_by_columns = snapshot(batch), superseded_of_all()
        transaction.savepoint_rollback(savepoint)
    batch = event_batch_create(source=EventBatch.Source.CSV)
    columns = columns_of(WINDOW_ROWS)
    report = meter_events_ingest(
        events=[columns.event_input(index) for index in range(len(WINDOW_ROWS))],
        batch=batch,
        now=NOW,
    )

    assert [(c.accepted, c.duplicates, c.rejected) for c in counts] == [(5, 1, 1), (4, 0, 0)]
    assert (report.accepted, report.duplicates, report.rejected) == (9, 1, 1)
    assert by_columns == snapshot(batch)
    assert superseded_by_columns == superseded_of_all()
    assert {ident for ident, superseded in superseded_of_all().items() if not superseded} == {
        "s-other-day", "w-2", "w-3", "h-2", "h-3", "h-4", "a-1", "a-2",
    }  # fmt: skip
