"""Random chunks through the columnar path end as a slow, obvious computation says they must.

Chunks of random events (meters counted by sum, count and last; known and unknown customers;
timestamps across the accepted window, some in the same second; plain and unusual values;
identifiers repeated within and across chunks, with the same content or not; whole chunks
sent again) go through ``meter_events_ingest_columns`` one after the other in one batch, as
an upload's chunks do. Then the counts, the stored events, the hourly rollups and the meter
event summaries by hour, by day and over a range with partial hours are compared with what
brute force over the raw inputs gives. Both databases take their set-based columnar writer
(COPY on PostgreSQL, ``executemany`` and one rollup upsert per chunk on SQLite); the same
answers hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import hypothesis
import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.ingestion import (
    EventColumns,
    event_batch_create,
    meter_events_ingest,
    meter_events_ingest_columns,
)
from events.models import EventBatch, EventRejection, MeterEvent, UsageRollup
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory
from usage.summaries import Grouping, meter_event_summaries

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 30, 45, tzinfo=UTC)
NOW_SECONDS = int(NOW.timestamp())
OLDEST = NOW_SECONDS - django_settings.USAGE_TIMESTAMP_MAX_AGE_DAYS * 86400
NEWEST = NOW_SECONDS + django_settings.USAGE_TIMESTAMP_MAX_FUTURE_SECONDS
THIS_HOUR = NOW_SECONDS - NOW_SECONDS % 3600
FORMULAS = [Meter.Formula.SUM, Meter.Formula.COUNT, Meter.Formula.LAST]
WINDOWS = ["", "", "hour", "day"]  # no event time window, or one
WINDOW_SECONDS = {"hour": 3600, "day": 86400}
REFS = ["cus_a", "cus_b", "cus_c"]
KEYS = ("stripe_customer_id", "value", "note")
INVALID = "invalid"  # a value the core refuses (not a number, or too many digits)


@dataclass(frozen=True)
class Row:
    event_name: str
    timestamp: int  # Unix seconds
    identifier: str  # "": the core makes one
    customer_ref: str
    value_text: str
    note: str
    value: Decimal | str | None  # what the text means: a number, INVALID, or None (missing)

    def content(self) -> tuple[str, str, int, str]:
        return (self.event_name, self.customer_ref, self.timestamp, self.value_text)


# --- Strategies ------------------------------------------------------------------------------
plain_values = st.builds(
    lambda digits, scale: Decimal(digits).scaleb(-scale),
    st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1),
    st.integers(min_value=0, max_value=10),
).map(lambda number: (f"{number:f}", number))
unusual_values = st.sampled_from(["1e3", "-2.5E-2", ".5", "+7", "0.000", "-0"]).map(
    lambda text: (text, Decimal(text))
)
refused_values = st.sampled_from(
    ["abc", "1,000", "NaN", "Infinity", "1_000", "1234567890123456", "-0.1234567890123456"]
).map(lambda text: (text, INVALID))
values = st.one_of(
    plain_values,
    plain_values,
    plain_values,
    unusual_values,
    refused_values,
    st.just(("", None)),
)
in_window = st.builds(
    lambda hours_back, second: THIS_HOUR - hours_back * 3600 + second,
    st.sampled_from([0, 0, 1, 2, 5, 23, 24, 25, 49, 24 * 34]),
    st.sampled_from([0, 0, 1, 59, 60, 299, 1799, 3599]),
).filter(lambda timestamp: OLDEST <= timestamp <= NEWEST)
timestamps = st.one_of(
    in_window,
    in_window,
    in_window,
    in_window,
    st.sampled_from([OLDEST - 1, OLDEST, NEWEST, NEWEST + 1]),
)
notes = st.sampled_from(["", "", "x", 'say "hi"', "ünï\u00e9", "back\\slash"])


@st.composite
def rows(draw: st.DrawFn, *, meters: int, customers: int, clean: bool) -> Row:
    """One event. ``clean``: one that is valid on every count (a chunk of only those is
    accepted column by column on PostgreSQL)."""
    names = [f"meter_{index}" for index in range(meters)]
    if clean:
        name = draw(st.sampled_from(names))
        ref = draw(st.sampled_from(REFS[:customers]))
        value_text, value = draw(plain_values)
        timestamp = draw(in_window)
        digest = hashlib.sha256(repr((name, ref, timestamp, value_text)).encode()).hexdigest()
        return Row(name, timestamp, f"ca_{digest[:40]}", ref, value_text, "", value)
    name = draw(st.sampled_from([*names, *names, "no_such_meter"]))
    ref = draw(st.sampled_from([*REFS[:customers], *REFS[:customers], "cus_missing", ""]))
    value_text, value = draw(values)
    identifier = draw(st.sampled_from(["", "id-0", "id-1", "id-2", "id-3", "unique"]))
    return Row(name, draw(timestamps), identifier, ref, value_text, draw(notes), value)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[Meter.Formula], list[str], int, list[tuple[list[Row], bool]]]:
    """Meter formulas and event time windows, the number of customers, and chunks: (rows,
    content-addressed)."""
    formulas = draw(st.lists(st.sampled_from(FORMULAS), min_size=1, max_size=3))
    windows = draw(
        st.lists(st.sampled_from(WINDOWS), min_size=len(formulas), max_size=len(formulas))
    )
    customers = draw(st.integers(min_value=1, max_value=3))
    chunks: list[tuple[list[Row], bool]] = []
    sent: list[Row] = []
    for number in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["mixed", "mixed", "clean", "again"]))
        if kind == "again" and chunks:  # a chunk sent again, whole (a file uploaded twice)
            content_addressed = [chunk for chunk in chunks if chunk[1]]
            chunks.append(draw(st.sampled_from([*chunks, *content_addressed])))
            continue
        clean = kind == "clean"
        chunk = draw(
            st.lists(rows(meters=len(formulas), customers=customers, clean=clean), max_size=12)
        )
        chunk = [
            Row(**{**row.__dict__, "identifier": f"u-{number}-{index}"})
            if row.identifier == "unique"
            else row
            for index, row in enumerate(chunk)
        ]
        if sent and not clean:  # some rows repeat earlier ones exactly (identifier too)
            repeats = draw(st.lists(st.sampled_from(sent), max_size=3))
            chunk = [*chunk, *repeats]
            chunk = draw(st.permutations(chunk))
        if chunk:
            chunks.append((chunk, clean))
            sent.extend(row for row in chunk if row.identifier)
    return formulas, windows, customers, chunks


def columns_of(chunk: list[Row], *, content_addressed: bool) -> EventColumns:
    payload_of = {
        "stripe_customer_id": [row.customer_ref for row in chunk],
        "value": [row.value_text for row in chunk],
        "note": [row.note for row in chunk],
    }
    return EventColumns(
        event_names=[row.event_name for row in chunk],
        timestamps=[row.timestamp for row in chunk],
        identifiers=[row.identifier for row in chunk],
        payload=payload_of,
        lines=list(range(2, len(chunk) + 2)),
        raws=[{"event_name": row.event_name} for row in chunk],
        content_addressed=content_addressed,
    )


# --- The slow, obvious answer ----------------------------------------------------------------
@dataclass
class Expected:
    """An accepted event as brute force sees it; ``order`` is its place in receipt order."""

    order: int
    identifier: str  # "" when the core made it
    meter: int  # index into the meters
    customer_ref: str
    timestamp: int
    value: Decimal
    payload: dict[str, str]


def accepted_value(row: Row, formula: str) -> Decimal | None:
    """The value the event is stored with, or None when it is refused."""
    if row.value is None:
        return Decimal(1) if formula == Meter.Formula.COUNT else None
    return None if row.value == INVALID else row.value  # type: ignore[return-value]


def brute_force(
    formulas: Sequence[str], customers: int, chunks: list[tuple[list[Row], bool]]
) -> tuple[list[tuple[int, int, int]], list[Expected]]:
    """Per chunk (accepted, duplicates, rejected) and the accepted events in receipt order."""
    names = {f"meter_{index}": index for index in range(len(formulas))}
    known = set(REFS[:customers])
    claimed: dict[str, tuple[int, str, int, Decimal]] = {}
    counts: list[tuple[int, int, int]] = []
    accepted: list[Expected] = []
    for chunk, _ in chunks:
        taken = duplicates = refused = 0
        for row in chunk:
            meter = names.get(row.event_name)
            value = None if meter is None else accepted_value(row, formulas[meter])
            if (
                meter is None
                or row.customer_ref not in known
                or value is None
                or not OLDEST <= row.timestamp <= NEWEST
            ):
                refused += 1  # a refused event claims no identifier
                continue
            content = (meter, row.customer_ref, row.timestamp, value)
            if row.identifier in claimed:
                if claimed[row.identifier] == content:  # Decimal compares numerically
                    duplicates += 1
                else:
                    refused += 1
                continue
            if row.identifier:
                claimed[row.identifier] = content
            payload = dict(zip(KEYS, (row.customer_ref, row.value_text, row.note), strict=True))
            accepted.append(
                Expected(
                    len(accepted),
                    row.identifier,
                    meter,
                    row.customer_ref,
                    row.timestamp,
                    value,
                    {key: text for key, text in payload.items() if text},
                )
            )
            taken += 1
        counts.append((taken, duplicates, refused))
    return counts, accepted


def aggregate(events: list[tuple[int, int, Decimal]], formula: str) -> tuple[Decimal, int]:
    """(aggregated value, event count) of (timestamp, id, value) events."""
    if not events:
        return Decimal(0), 0
    if formula == Meter.Formula.COUNT:
        return Decimal(len(events)), len(events)
    if formula == Meter.Formula.LAST:
        return max(events)[2], len(events)
    return sum((value for _, _, value in events), Decimal(0)), len(events)


def moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# --- The property ----------------------------------------------------------------------------
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(scenario=scenarios())
def test_columnar_chunks_end_as_brute_force_says(db, scenario) -> None:
    formulas, windows, customers, chunks = scenario
    # Each example starts clean: everything it writes is rolled back at its end.
    with time_machine.travel(NOW, tick=False), transaction.atomic():
        check_scenario(formulas, windows, customers, chunks)
        transaction.set_rollback(True)


def check_scenario(
    formulas: Sequence[str],
    windows: Sequence[str],
    customers: int,
    chunks: list[tuple[list[Row], bool]],
) -> None:
    meters = [
        MeterFactory.create(
            event_name=f"meter_{index}", aggregation_formula=formula, event_time_window=window
        )
        for index, (formula, window) in enumerate(zip(formulas, windows, strict=True))
    ]
    customer_of = {ref: CustomerFactory.create(external_id=ref) for ref in REFS[:customers]}
    batch = event_batch_create(source=EventBatch.Source.CSV)
    expected_counts, expected = brute_force(formulas, customers, chunks)

    for (chunk, content_addressed), want in zip(chunks, expected_counts, strict=True):
        with transaction.atomic():  # one transaction per chunk, as the upload pipeline does
            counts = meter_events_ingest_columns(
                columns=columns_of(chunk, content_addressed=content_addressed), batch=batch
            )
        assert (counts.accepted, counts.duplicates, counts.rejected) == want
        # What the examples covered (--hypothesis-show-statistics).
        if content_addressed:
            hypothesis.event("content-addressed chunk" + (", sent again" if want[0] == 0 else ""))
        else:
            hypothesis.event("mixed chunk with " + ("duplicates" if want[1] else "no duplicates"))
    assert EventRejection.objects.filter(batch=batch).count() == sum(c[2] for c in expected_counts)

    # Stored events: exactly the accepted ones, in receipt order (ids follow it).
    stored = list(MeterEvent.objects.order_by("id"))
    meter_index = {meter.pk: index for index, meter in enumerate(meters)}
    ref_of = {customer.pk: ref for ref, customer in customer_of.items()}
    assert [
        (
            event.identifier if not event.identifier.startswith("evt_") else "",
            meter_index[event.meter_id],
            ref_of[event.customer_id],
            int(event.timestamp.timestamp()),
            event.value,
            event.payload,
            event.batch_id,
        )
        for event in stored
    ] == [
        (e.identifier, e.meter, e.customer_ref, e.timestamp, e.value, e.payload, batch.pk)
        for e in expected
    ]
    # Meters with an event time window count the most recently received event of each
    # (customer, window) only: the greatest id. The others are superseded.
    winners: dict[tuple[int, str, int], int] = {}
    for event, want_event in zip(stored, expected, strict=True):
        span = WINDOW_SECONDS.get(windows[want_event.meter])
        if span is not None:
            starts = want_event.timestamp - want_event.timestamp % span
            winners[(want_event.meter, want_event.customer_ref, starts)] = event.pk
    counted_windowed = set(winners.values())
    assert all(event.cancelled_at is None for event in stored)
    assert [event.pk for event in stored if event.superseded] == [
        event.pk
        for event, want_event in zip(stored, expected, strict=True)
        if windows[want_event.meter] and event.pk not in counted_windowed
    ]
    # (timestamp, id, value) of every counted event, by (meter, customer).
    by_pair: dict[tuple[int, str], list[tuple[int, int, Decimal]]] = {}
    for event, want_event in zip(stored, expected, strict=True):
        if not windows[want_event.meter] or event.pk in counted_windowed:
            key = (want_event.meter, want_event.customer_ref)
            by_pair.setdefault(key, []).append((want_event.timestamp, event.pk, want_event.value))

    # Hourly rollups: sum, count and the last event per (meter, customer, hour).
    want_rollups = {}
    for (meter_number, ref), events in by_pair.items():
        hours: dict[int, list[tuple[int, int, Decimal]]] = {}
        for timed in events:
            hours.setdefault(timed[0] - timed[0] % 3600, []).append(timed)
        for hour, in_hour in hours.items():
            last = max(in_hour)
            want_rollups[(meter_number, ref, moment(hour))] = (
                sum((value for _, _, value in in_hour), Decimal(0)),
                len(in_hour),
                last[2],
                moment(last[0]),
                last[1],
            )
    rollups = {
        (meter_index[r.meter_id], ref_of[r.customer_id], r.hour): (
            r.value_sum,
            r.event_count,
            r.last_value,
            r.last_timestamp,
            r.last_event_id,
        )
        for r in UsageRollup.objects.all()
        if r.event_count  # rows left empty count nothing
    }
    assert rollups == want_rollups

    # Summaries by hour and by day over the whole accepted window, and over a range whose
    # edges cut hours (read from raw events there, from rollups in between).
    day_start = moment(OLDEST - OLDEST % 86400)
    day_end = moment(NOW_SECONDS - NOW_SECONDS % 86400 + 86400)
    minute = NOW_SECONDS - NOW_SECONDS % 60
    ranges = [
        (Grouping.HOUR, day_start, day_end, 3600),
        (Grouping.DAY, day_start, day_end, 86400),
        (Grouping.NONE, moment(minute - 49 * 3600 - 17 * 60), moment(minute + 6 * 60), None),
    ]
    for (index, meter), (ref, customer) in (
        (pair, customer) for pair in enumerate(meters) for customer in customer_of.items()
    ):
        events = by_pair.get((index, ref), [])
        for grouping, start, end, step in ranges:
            summaries = meter_event_summaries(
                meter=meter, customer=customer, start=start, end=end, grouping=grouping
            )
            got = [(s.start, s.end, s.aggregated_value, s.event_count) for s in summaries]
            want_summaries: list[tuple[datetime, datetime, Decimal, int]] = []
            window = start
            while window < end:
                window_end = end if step is None else window + timedelta(seconds=step)
                inside = [
                    event
                    for event in events
                    if window.timestamp() <= event[0] < window_end.timestamp()
                ]
                want_summaries.append(
                    (window, window_end, *aggregate(inside, meter.aggregation_formula))
                )
                window = window_end
            assert got == want_summaries, (grouping, meter.aggregation_formula, ref)


def test_brute_force_counts_what_the_rules_say() -> None:
    """The slow answer itself, on a case worked out by hand: a test that cannot fail is a
    defect, and so is a reference that agrees with anything."""
    at = THIS_HOUR - 3600
    rows_ = [
        Row("meter_0", at, "a", "cus_a", "2.50", "", Decimal("2.50")),
        Row("meter_0", at, "a", "cus_a", "2.5", "x", Decimal("2.5")),  # same content
        Row("meter_0", at + 1, "a", "cus_a", "2.5", "", Decimal("2.5")),  # conflict
        Row("meter_0", at, "b", "cus_missing", "1", "", Decimal(1)),  # unknown customer
        Row("meter_0", at, "b", "cus_a", "", "", None),  # no value: b is still free
        Row("meter_1", at, "b", "cus_a", "", "", None),  # count meter: counts 1, claims b
        Row("meter_0", OLDEST - 1, "c", "cus_a", "1", "", Decimal(1)),  # too old
        Row("no_such_meter", at, "d", "cus_a", "1", "", Decimal(1)),
    ]
    counts, accepted = brute_force(
        [Meter.Formula.SUM, Meter.Formula.COUNT], 1, [(rows_[:4], False), (rows_[4:], False)]
    )
    assert counts == [(1, 1, 2), (1, 0, 3)]
    assert [(e.identifier, e.meter, e.value) for e in accepted] == [
        ("a", 0, Decimal("2.50")),
        ("b", 1, Decimal(1)),
    ]
    events = [(at, 1, Decimal(3)), (at, 2, Decimal(-1)), (at - 5, 3, Decimal(9))]
    assert aggregate(events, Meter.Formula.LAST) == (Decimal(-1), 3)
    assert aggregate(events, Meter.Formula.SUM) == (Decimal(11), 3)
    assert aggregate(events, Meter.Formula.COUNT) == (Decimal(3), 3)


# A rejected event claims no identifier: when a batch's first event with an identifier
# conflicts with the stored one (and is rejected), its repeats in the batch are judged against
# the stored event, not against it. Both paths (per event and in columns), both databases.
@pytest.mark.parametrize("path", ["columns", "per_event"])
@pytest.mark.parametrize(
    ("repeats", "expected"),
    [
        (["6", "6"], (0, 0, 2)),  # both differ from the stored 5: two conflicts
        (["6", "5"], (0, 1, 1)),  # the second is the stored event again: a duplicate
    ],
)
def test_a_repeat_of_a_conflicting_event_is_judged_against_the_stored_one(
    db, path: str, repeats: list[str], expected: tuple[int, int, int]
) -> None:
    MeterFactory.create(event_name="meter_0")
    CustomerFactory.create(external_id="cus_a")
    at = THIS_HOUR - 3600
    batch = event_batch_create(source=EventBatch.Source.CSV)

    def chunk(value_texts: list[str]) -> EventColumns:
        return columns_of(
            [Row("meter_0", at, "id-0", "cus_a", text, "", Decimal(text)) for text in value_texts],
            content_addressed=False,
        )

    meter_events_ingest_columns(columns=chunk(["5"]), batch=batch, now=NOW)
    columns = chunk(repeats)
    if path == "columns":
        counts = meter_events_ingest_columns(columns=columns, batch=batch, now=NOW)
        got = (counts.accepted, counts.duplicates, counts.rejected)
    else:
        events = [columns.event_input(index) for index in range(len(columns))]
        report = meter_events_ingest(events=events, batch=batch, now=NOW)
        got = (report.accepted, report.duplicates, report.rejected)

    assert got == expected
    assert EventRejection.objects.filter(batch=batch).count() == expected[2]
