"""The ingestion core: validation codes, deduplication, rollups, windows, cancellation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User

from events.ingestion import (
    Code,
    EventInput,
    Outcome,
    RejectionInput,
    event_batch_cancel,
    event_batch_create,
    event_rejections_record,
    meter_event_cancel,
    meter_events_ingest,
)
from events.models import EventBatch, EventRejection, MeterEvent, UsageRollup
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 30, 45, tzinfo=UTC)


def ingest(events, *, dry_run=False, now=NOW, user=None):
    batch = event_batch_create(source=EventBatch.Source.API, user=user, dry_run=dry_run)
    return meter_events_ingest(events=events, batch=batch, now=now)


def ev(meter, customer, value="1", *, at=None, identifier=None, **payload):
    data = {meter.customer_mapping_key: customer.external_id}
    if value is not None:
        data[meter.value_settings_key] = value
    data.update(payload)
    return EventInput(
        event_name=meter.event_name,
        payload=data,
        identifier=identifier,
        timestamp=at or NOW - timedelta(minutes=5),
    )


def rollups(meter, customer):
    return {
        r.hour: (r.value_sum, r.event_count, r.last_value)
        for r in UsageRollup.objects.filter(meter=meter, customer=customer)
        if r.event_count
    }


@pytest.fixture
def meter():
    return MeterFactory(event_name="api_calls")


@pytest.fixture
def customer():
    return CustomerFactory(external_id="cus_a")


# --- Validation ------------------------------------------------------------------------------
def rejected_code(event):
    report = ingest([event])
    result = report.results[0]
    assert result.outcome == Outcome.REJECTED
    return result


def test_accepts_valid_event_and_stores_it_in_utc_to_the_second(meter, customer):
    at = datetime(2026, 3, 10, 17, 20, 10, 999_000, tzinfo=ZoneInfo("Asia/Karachi"))  # UTC+5
    report = ingest([ev(meter, customer, "2.50", at=at, identifier="a1")])
    assert (report.accepted, report.duplicates, report.rejected) == (1, 0, 0)
    event = MeterEvent.objects.get(identifier="a1")
    assert event.timestamp == datetime(2026, 3, 10, 12, 20, 10, tzinfo=UTC)
    assert event.value == Decimal("2.50")
    assert event.payload == {"stripe_customer_id": "cus_a", "value": "2.50"}
    assert event.received_at == NOW
    assert report.totals_by_meter[meter.pk].event_count == 1
    assert report.totals_by_meter[meter.pk].value_sum == Decimal("2.5")


def test_generates_identifier_when_missing(meter, customer):
    report = ingest([ev(meter, customer), ev(meter, customer)])
    ids = [r.identifier for r in report.results]
    assert all(i.startswith("evt_") for i in ids) and ids[0] != ids[1]
    assert report.accepted == 2


def test_unknown_event_name_is_no_meter(customer):
    result = rejected_code(EventInput(event_name="nope", payload={"value": "1"}))
    assert result.code == Code.NO_METER
    assert result.message == "No meter was found matching event_name nope."
    assert result.param == "event_name"


def test_inactive_meter_is_archived_meter(customer):
    meter = MeterFactory(
        event_name="old", status=Meter.Status.INACTIVE, deactivated_at=NOW - timedelta(days=1)
    )
    assert rejected_code(ev(meter, customer)).code == Code.ARCHIVED_METER


def test_missing_customer_key(meter):
    result = rejected_code(EventInput(event_name=meter.event_name, payload={"value": "3"}))
    assert result.code == Code.NO_CUSTOMER_DEFINED
    assert result.message == "Customer mapping key stripe_customer_id not found in payload."
    assert result.param == "payload[stripe_customer_id]"


def test_unknown_customer(meter):
    result = rejected_code(
        EventInput(
            event_name=meter.event_name, payload={"stripe_customer_id": "cus_x", "value": "1"}
        )
    )
    assert result.code == Code.CUSTOMER_NOT_FOUND
    assert "cus_x" in result.message


def test_an_unknown_customer_id_that_differs_only_in_case_gets_did_you_mean(meter):
    CustomerFactory(external_id="cus_ABC")
    CustomerFactory(external_id="cus_Twin")
    CustomerFactory(external_id="cus_TWIN")  # two matches: no guess
    report = ingest(
        [ev(meter, type("C", (), {"external_id": ref})) for ref in ("cus_abc", "cus_twin")]
    )
    guessed, ambiguous = report.results
    assert guessed.message == "No customer was found with ID cus_abc. Did you mean cus_ABC?"
    assert ambiguous.message == "No customer was found with ID cus_twin."
    stored = EventRejection.objects.get(customer_ref="cus_abc")
    assert stored.message.endswith("Did you mean cus_ABC?")


@pytest.mark.parametrize(
    ("value", "advice"),
    [
        ("1,000", "Remove the thousands separator: write 1000."),
        ("12,500.75", "Remove the thousands separator: write 12500.75."),
        ("2,5", "Use a dot for decimals: write 2.5."),
        ("1.250,5", "Remove the thousands separator and use a dot for decimals: write 1250.5."),
        ("$12", "Remove the currency sign: write 12."),
    ],
)
def test_a_value_written_the_spreadsheet_way_says_what_to_write(meter, customer, value, advice):
    result = rejected_code(ev(meter, customer, value))
    assert result.code == Code.INVALID_VALUE
    assert result.message.endswith(advice)


def test_custom_payload_keys_are_used(customer):
    meter = MeterFactory(customer_mapping_key="account", value_settings_key="tokens")
    report = ingest(
        [EventInput(event_name=meter.event_name, payload={"account": "cus_a", "tokens": "7"})]
    )
    assert report.accepted == 1
    result = rejected_code(
        EventInput(event_name=meter.event_name, payload={"account": "cus_a", "value": "7"})
    )
    assert result.code == Code.VALUE_NOT_FOUND
    assert result.message == "Value key tokens not found in payload."


@pytest.mark.parametrize("formula", [Meter.Formula.SUM, Meter.Formula.LAST])
def test_missing_value_for_sum_and_last(customer, formula):
    meter = MeterFactory(aggregation_formula=formula)
    assert rejected_code(ev(meter, customer, None)).code == Code.VALUE_NOT_FOUND
    assert rejected_code(ev(meter, customer, "  ")).code == Code.VALUE_NOT_FOUND


def test_count_meter_needs_no_value_and_counts_events(customer):
    meter = MeterFactory(aggregation_formula=Meter.Formula.COUNT)
    report = ingest([ev(meter, customer, None), ev(meter, customer, "5")])
    assert report.accepted == 2
    assert sorted(MeterEvent.objects.values_list("value", flat=True)) == [1, 5]
    (only,) = rollups(meter, customer).values()
    assert only[1] == 2


@pytest.mark.parametrize(
    "raw", ["abc", "NaN", "nan", "Infinity", "-inf", "1,000", "1_000", "0x10", "1e", "--1", "1e31"]
)
def test_invalid_values(meter, customer, raw):
    result = rejected_code(ev(meter, customer, raw))
    assert result.code == Code.INVALID_VALUE
    assert result.param == "payload[value]"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("-3.5", Decimal("-3.5")),
        (".5", Decimal("0.5")),
        ("+12", Decimal(12)),
        ("1e3", Decimal(1000)),
        ("123456789012345", Decimal(123456789012345)),
        ("0.000000000000000000012", Decimal("0.000000000000000000012")),
        ("1.50000000000000000000", Decimal("1.5")),
    ],
)
def test_valid_values(meter, customer, raw, stored):
    ingest([ev(meter, customer, raw, identifier="v")])
    assert MeterEvent.objects.get(identifier="v").value == stored


def test_too_many_digits_message(meter, customer):
    result = rejected_code(ev(meter, customer, "1234567890.123456"))
    assert result.code == Code.VALUE_TOO_MANY_DIGITS
    assert result.message == (
        "The value in the event payload can have at most 15 digits. Received 1234567890.123456."
    )


def test_timestamp_window(meter, customer, settings):
    settings.USAGE_TIMESTAMP_MAX_AGE_DAYS = 35
    settings.USAGE_TIMESTAMP_MAX_FUTURE_SECONDS = 300
    edge_past = NOW - timedelta(days=35)
    edge_future = NOW + timedelta(seconds=300)
    report = ingest(
        [
            ev(meter, customer, at=edge_past),
            ev(meter, customer, at=edge_future),
            ev(meter, customer, at=edge_past - timedelta(seconds=1)),
            ev(meter, customer, at=edge_future + timedelta(seconds=1)),
        ]
    )
    assert [r.code for r in report.results] == [
        "",
        "",
        Code.TIMESTAMP_TOO_FAR_IN_PAST,
        Code.TIMESTAMP_IN_FUTURE,
    ]
    assert "more than 5 minutes in the future" in report.results[3].message
    settings.USAGE_TIMESTAMP_MAX_AGE_DAYS = 2
    assert (
        rejected_code(ev(meter, customer, at=NOW - timedelta(days=3))).code
        == Code.TIMESTAMP_TOO_FAR_IN_PAST
    )


def test_identifier_too_long(meter, customer):
    report = ingest(
        [ev(meter, customer, identifier="x" * 100), ev(meter, customer, identifier="y" * 101)]
    )
    assert report.results[0].outcome == Outcome.ACCEPTED
    assert report.results[1].code == Code.IDENTIFIER_TOO_LONG


def test_naive_timestamp_is_a_programming_error(meter, customer):
    with pytest.raises(ValueError, match="timezone-aware"):
        ingest([ev(meter, customer, at=datetime(2026, 3, 10, 12))])


def test_rejections_are_recorded_with_provenance(meter, customer):
    batch = event_batch_create(source=EventBatch.Source.CSV)
    raw = {"timestamp": "2026-03-10", "event_name": "api_calls", "payload_value": "x"}
    meter_events_ingest(
        events=[
            EventInput(
                event_name="api_calls",
                payload={"stripe_customer_id": "cus_a", "value": "x"},
                identifier="r1",
                timestamp=NOW,
                line=7,
                raw=raw,
            )
        ],
        batch=batch,
        now=NOW,
    )
    rejection = EventRejection.objects.get()
    assert rejection.batch == batch
    assert rejection.line == 7
    assert rejection.column == "payload_value"  # as the file names it
    assert rejection.code == Code.INVALID_VALUE
    assert rejection.identifier == "r1"
    assert rejection.event_name == "api_calls"
    assert rejection.meter == meter
    assert rejection.customer_ref == "cus_a"
    assert rejection.raw == raw


def test_results_keep_input_order_with_counts(meter, customer):
    report = ingest(
        [
            ev(meter, customer, "1", identifier="o1"),
            ev(meter, customer, "bad", identifier="o2"),
            ev(meter, customer, "1", identifier="o1"),
            ev(meter, customer, "2", identifier="o3"),
        ]
    )
    assert [r.outcome for r in report.results] == [
        Outcome.ACCEPTED,
        Outcome.REJECTED,
        Outcome.DUPLICATE,
        Outcome.ACCEPTED,
    ]
    assert [r.identifier for r in report.results] == ["o1", "o2", "o1", "o3"]
    assert (report.accepted, report.duplicates, report.rejected) == (2, 1, 1)


def test_event_rejections_record_for_source_parse_errors():
    batch = event_batch_create(source=EventBatch.Source.CSV)
    count = event_rejections_record(
        batch=batch,
        rejections=[
            RejectionInput(
                code="invalid_timestamp",
                message="Unreadable timestamp",
                line=3,
                column="timestamp",
                raw={"timestamp": "yesterday"},
            )
        ],
    )
    assert count == 1
    assert batch.rejections.get().raw == {"timestamp": "yesterday"}


# --- Deduplication ---------------------------------------------------------------------------
def test_same_content_is_a_duplicate_never_counted_twice(meter, customer):
    first = ingest([ev(meter, customer, "4", identifier="d1", region="eu")])
    again = ingest([ev(meter, customer, "4.0", identifier="d1", region="us")])
    assert first.accepted == 1
    assert again.results[0].outcome == Outcome.DUPLICATE
    assert again.totals_by_meter == {}
    assert MeterEvent.objects.count() == 1
    assert EventRejection.objects.count() == 0
    (bucket,) = rollups(meter, customer).values()
    assert bucket[:2] == (Decimal(4), 1)


def test_retried_event_without_timestamp_is_a_duplicate(meter, customer):
    event = EventInput(
        event_name="api_calls",
        payload={"stripe_customer_id": "cus_a", "value": "1"},
        identifier="n",
    )
    ingest([event], now=NOW)
    again = ingest([event], now=NOW + timedelta(minutes=2))
    assert again.results[0].outcome == Outcome.DUPLICATE


@pytest.mark.parametrize("change", ["value", "timestamp", "customer", "meter"])
def test_different_content_is_a_conflict(meter, customer, change):
    other_customer = CustomerFactory(external_id="cus_b")
    other_meter = MeterFactory(event_name="other")
    ingest([ev(meter, customer, "4", identifier="c1")])
    changed = {
        "value": ev(meter, customer, "5", identifier="c1"),
        "timestamp": ev(meter, customer, "4", identifier="c1", at=NOW - timedelta(minutes=6)),
        "customer": ev(meter, other_customer, "4", identifier="c1"),
        "meter": ev(other_meter, customer, "4", identifier="c1"),
    }[change]
    report = ingest([changed])
    result = report.results[0]
    assert result.code == Code.DUPLICATE_CONFLICT
    assert "An event already exists with identifier c1" in result.message
    assert MeterEvent.objects.get().value == 4
    rejection = EventRejection.objects.get()
    assert rejection.code == Code.DUPLICATE_CONFLICT
    assert rejection.identifier == "c1"


def test_repeated_identifier_within_a_batch_first_wins(meter, customer):
    report = ingest(
        [
            ev(meter, customer, "bad", identifier="w"),  # rejected: claims nothing
            ev(meter, customer, "1", identifier="w"),
            ev(meter, customer, "1", identifier="w"),
            ev(meter, customer, "2", identifier="w"),
        ]
    )
    assert [r.outcome for r in report.results] == [
        Outcome.REJECTED,
        Outcome.ACCEPTED,
        Outcome.DUPLICATE,
        Outcome.REJECTED,
    ]
    assert report.results[3].code == Code.DUPLICATE_CONFLICT
    assert MeterEvent.objects.get().value == 1


def test_cancelled_event_keeps_its_identifier(meter, customer, finance_user):
    ingest([ev(meter, customer, "4", identifier="k")])
    meter_event_cancel(event=MeterEvent.objects.get(), user=finance_user)
    again = ingest([ev(meter, customer, "4", identifier="k")])
    assert again.results[0].outcome == Outcome.DUPLICATE
    assert rollups(meter, customer) == {}


def test_dry_run_validates_and_deduplicates_but_writes_nothing(meter, customer):
    ingest([ev(meter, customer, "4", identifier="s1")])
    report = ingest(
        [
            ev(meter, customer, "4", identifier="s1"),
            ev(meter, customer, "5", identifier="s1"),
            ev(meter, customer, "6", identifier="s2"),
            ev(meter, customer, "6", identifier="s2"),
            ev(meter, customer, "oops", identifier="s3"),
        ],
        dry_run=True,
    )
    assert [r.outcome for r in report.results] == [
        Outcome.DUPLICATE,
        Outcome.REJECTED,
        Outcome.ACCEPTED,
        Outcome.DUPLICATE,
        Outcome.REJECTED,
    ]
    assert report.totals_by_meter[meter.pk].value_sum == 6
    assert MeterEvent.objects.count() == 1
    assert sum(v[1] for v in rollups(meter, customer).values()) == 1
    assert set(EventRejection.objects.values_list("code", flat=True)) == {
        Code.DUPLICATE_CONFLICT,
        Code.INVALID_VALUE,
    }


# --- Rollups ---------------------------------------------------------------------------------
H = datetime(2026, 3, 10, 9, tzinfo=UTC)


def test_rollups_hold_sum_count_and_last_per_hour(meter, customer):
    ingest(
        [
            ev(meter, customer, "1", at=H + timedelta(minutes=10)),
            ev(meter, customer, "2", at=H + timedelta(minutes=50)),
            ev(meter, customer, "3", at=H + timedelta(minutes=20)),
            ev(meter, customer, "10", at=H + timedelta(hours=1, minutes=1)),
        ]
    )
    ingest([ev(meter, customer, "-4", at=H + timedelta(minutes=40))])
    assert rollups(meter, customer) == {
        H: (Decimal(2), 4, Decimal(2)),
        H + timedelta(hours=1): (Decimal(10), 1, Decimal(10)),
    }


def test_last_prefers_the_later_received_event_at_the_same_second(meter, customer):
    at = H + timedelta(minutes=5)
    ingest(
        [
            ev(meter, customer, "1", at=at, identifier="zz"),
            ev(meter, customer, "2", at=at, identifier="aa"),
        ]
    )
    ingest([ev(meter, customer, "3", at=at)])
    ingest([ev(meter, customer, "9", at=at - timedelta(seconds=1))])
    assert rollups(meter, customer)[H][2] == Decimal(3)


@pytest.mark.parametrize("window", [Meter.TimeWindow.HOUR, Meter.TimeWindow.DAY])
def test_pre_aggregated_meter_keeps_the_most_recently_received_event(customer, window):
    meter = MeterFactory(event_time_window=window)
    day = datetime(2026, 3, 9, tzinfo=UTC)
    ingest([ev(meter, customer, "5", at=day + timedelta(hours=3, minutes=10), identifier="p1")])
    ingest(
        [
            ev(meter, customer, "7", at=day + timedelta(hours=3, minutes=5), identifier="p2"),
            ev(meter, customer, "8", at=day + timedelta(hours=5), identifier="p3"),
        ]
    )
    counted = set(MeterEvent.objects.filter(superseded=False).values_list("identifier", flat=True))
    total = sum(v[0] for v in rollups(meter, customer).values())
    if window == Meter.TimeWindow.HOUR:
        assert counted == {"p2", "p3"}
        assert total == 15
    else:
        assert counted == {"p3"}
        assert total == 8
        assert rollups(meter, customer) == {day + timedelta(hours=5): (Decimal(8), 1, Decimal(8))}


def test_pre_aggregated_within_one_batch_later_input_wins(customer):
    meter = MeterFactory(event_time_window=Meter.TimeWindow.HOUR)
    ingest(
        [
            ev(meter, customer, "5", at=H + timedelta(minutes=40), identifier="b"),
            ev(meter, customer, "6", at=H + timedelta(minutes=1), identifier="a"),
        ]
    )
    assert rollups(meter, customer) == {H: (Decimal(6), 1, Decimal(6))}


# --- Cancellation ----------------------------------------------------------------------------
def test_cancel_event_recomputes_rollup_and_records_audit(meter, customer, finance_user):
    ingest(
        [
            ev(meter, customer, "1", at=H + timedelta(minutes=1), identifier="e1"),
            ev(meter, customer, "5", at=H + timedelta(minutes=9), identifier="e2"),
        ]
    )
    event = MeterEvent.objects.get(identifier="e2")
    meter_event_cancel(event=event, user=finance_user, now=NOW)
    event.refresh_from_db()
    assert event.cancelled_at == NOW and event.cancelled_by == finance_user
    assert rollups(meter, customer) == {H: (Decimal(1), 1, Decimal(1))}
    entry = AuditEntry.objects.get(target_type="events.meterevent")
    assert (entry.target_id, entry.action, entry.actor) == (str(event.pk), "cancel", finance_user)
    with pytest.raises(Exception, match="already cancelled"):
        meter_event_cancel(event=event, user=finance_user)


def test_cancel_in_pre_aggregated_window_revives_the_previous_event(customer, finance_user):
    meter = MeterFactory(event_time_window=Meter.TimeWindow.DAY)
    day = datetime(2026, 3, 9, tzinfo=UTC)
    ingest([ev(meter, customer, "5", at=day + timedelta(hours=1), identifier="old")])
    ingest([ev(meter, customer, "9", at=day + timedelta(hours=20), identifier="new")])
    assert rollups(meter, customer) == {day + timedelta(hours=20): (Decimal(9), 1, Decimal(9))}
    meter_event_cancel(event=MeterEvent.objects.get(identifier="new"), user=finance_user)
    assert rollups(meter, customer) == {day + timedelta(hours=1): (Decimal(5), 1, Decimal(5))}
    assert not MeterEvent.objects.get(identifier="old").superseded


def test_batch_cancel_cancels_only_that_batch(meter, customer, admin_role_user):
    kept = ingest([ev(meter, customer, "2", at=H)])
    gone = ingest(
        [ev(meter, customer, "3", at=H), ev(meter, customer, "4", at=H + timedelta(hours=2))]
    )
    assert kept.accepted == 1
    cancelled = event_batch_cancel(batch=gone.batch, user=admin_role_user)
    assert cancelled == 2
    assert rollups(meter, customer) == {H: (Decimal(2), 1, Decimal(2))}
    assert event_batch_cancel(batch=gone.batch, user=admin_role_user) == 0
    entry = AuditEntry.objects.filter(target_type="events.eventbatch").first()
    assert entry.changes == {"events_cancelled": [0, 0]}
    assert User.objects.filter(pk=entry.actor_id).exists()


def test_awkward_characters_survive_storage(meter, customer):
    identifier = 'tab\there\\back "quote"\nline'
    report = ingest(
        [ev(meter, customer, "1", identifier=identifier, note='a\\b\tc\r\n"d" \u00e9\u2603')]
    )
    assert report.accepted == 1
    event = MeterEvent.objects.get()
    assert event.identifier == identifier
    assert event.payload["note"] == 'a\\b\tc\r\n"d" \u00e9\u2603'


def test_nul_characters_are_rejected_not_fatal(meter, customer):
    report = ingest(
        [
            ev(meter, customer, "1", identifier="a\x00b"),
            ev(meter, customer, "1", note="x\x00y"),
            ev(meter, customer, "1", identifier="fine"),
        ]
    )
    assert [r.code for r in report.results] == [Code.INVALID_IDENTIFIER, Code.INVALID_PAYLOAD, ""]


@pytest.mark.parametrize(
    ("raw", "accepted"),
    [
        ("007", True),
        ("0", True),
        ("1000000000000000", True),  # one significant digit
        ("1234567890123456", False),
        ("1" + "0" * 30, True),
        ("1" + "0" * 31, False),
    ],
)
def test_whole_number_fast_path_agrees_with_the_rules(meter, customer, raw, accepted):
    report = ingest([ev(meter, customer, raw)])
    assert (report.accepted == 1) is accepted


def test_nul_in_a_customer_reference_is_stored_as_a_rejection(meter):
    report = ingest(
        [EventInput(event_name="api_calls", payload={"stripe_customer_id": "c\x00", "value": "1"})]
    )
    assert report.results[0].code == Code.CUSTOMER_NOT_FOUND
    assert EventRejection.objects.get().customer_ref == "c\ufffd"
