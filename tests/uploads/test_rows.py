"""Records to rows on their own (events in columns, the parser's own errors, derived
identifiers): no database, no worker."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from uploads import reading, rows
from uploads.reading import MeterKeys

MB = 1024 * 1024
METERS = {
    "api_calls": MeterKeys("api_calls", "API calls", "stripe_customer_id", "value", True, True),
    "tokens": MeterKeys("tokens", "Tokens", "account", "tokens", True, True),
}


def parse(data: bytes, *, max_line: int = MB) -> list[rows.ParsedRow]:
    content = reading.open_decompressed(io.BytesIO(data))
    lines = reading.text_lines(content, max_bytes=10 * MB, max_line_bytes=max_line)
    record_iter = reading.records(lines, max_line_bytes=max_line)
    header = reading.header_read(record_iter)
    builder = rows.RowBuilder(header, METERS)
    return [row for chunk in reading.chunked(record_iter, 3) for row in builder.build(chunk)]


# --- Timestamps -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-09-23", datetime(2024, 9, 23, tzinfo=UTC)),
        ("2024-09-23T16:22:25+0530", datetime(2024, 9, 23, 10, 52, 25, tzinfo=UTC)),
        ("2024-09-23T16:22:25+05:30", datetime(2024, 9, 23, 10, 52, 25, tzinfo=UTC)),
        ("2024-09-23T16:22:25Z", datetime(2024, 9, 23, 16, 22, 25, tzinfo=UTC)),
        ("2024-09-23T16:22:25", datetime(2024, 9, 23, 16, 22, 25, tzinfo=UTC)),
        ("2024-09-23T16:22:25-08:00", datetime(2024, 9, 24, 0, 22, 25, tzinfo=UTC)),
        ("1727108545", datetime(2024, 9, 23, 16, 22, 25, tzinfo=UTC)),
    ],
)
def test_timestamp_formats(text: str, expected: datetime) -> None:
    assert rows.parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text", ["yesterday", "2024-13-01", "23/09/2024", "2024-09-23T25:00:00Z", "99999999999999"]
)
def test_bad_timestamps_are_refused(text: str) -> None:
    with pytest.raises(rows.TimestampError):
        rows.parse_timestamp(text)


# --- Identifiers ------------------------------------------------------------------------------
def test_identical_rows_get_distinct_stable_identifiers() -> None:
    data = (
        b"timestamp,event_name,payload_stripe_customer_id,payload_value\n"
        b"2024-09-23,api_calls,cus_1,5\n"
        b"2024-09-23,api_calls,cus_1,5.0\n"  # the same value, written differently
        b"2024-09-23,api_calls,cus_1,6\n"
        b"2024-09-23T00:00:00Z,api_calls,cus_1,5\n"  # the same instant, written differently
    )
    first = [row.event.identifier for row in parse(data) if row.event and row.event.identifier]
    assert len(set(first)) == 4
    assert first[0].endswith("_0") and first[1].endswith("_1") and first[3].endswith("_2")
    assert first[0][:-2] == first[1][:-2] == first[3][:-2] != first[2][:-2]
    assert all(len(identifier) <= 100 for identifier in first)
    # The same file again gives the same identifiers, so the core sees duplicates.
    assert [row.event.identifier for row in parse(data) if row.event] == first


def test_derived_identifiers_never_change_between_versions() -> None:
    """A file imported by an earlier version and uploaded again must find its rows: these
    identifiers were made by the first version that derived them, and stay."""
    data = (
        "timestamp,event_name,payload_stripe_customer_id,payload_value,payload_account,"
        "payload_tokens\n"
        "2024-09-23,api_calls,cus_1,5,,\n"
        "2024-09-23,api_calls,cus_1,5.0,,\n"
        "2024-09-23,api_calls,cus_1,5,,\n"
        "2024-09-23T10:00:00+05:30,api_calls,cus_ü,0.50,,\n"
        "1727049600,api_calls,cus_1,1e2,,\n"
        "1727049600,api_calls,cus_1,,,\n"
        "1727049600,tokens,cus_1,,acct_9,12.000\n"
        "1727049600,unknown_meter,cus_1,3,,\n"
        "1969-12-31,api_calls,cus_1,007,,\n"
        "2024-09-23,api_calls,cus_1,5,,\n"
    ).encode()
    assert [row.event.identifier for row in parse(data) if row.event] == [
        "csv_88eececc49fded79beb5d65c73719610_0",
        "csv_88eececc49fded79beb5d65c73719610_1",
        "csv_88eececc49fded79beb5d65c73719610_2",
        "csv_597e6fce9c7c54ab8567bc1dad75e700_0",
        "csv_7e21b3676d190825310280f0c1ea353a_0",
        "csv_51af9af4cc3a3f2beb48b0d5b8a3bedd_0",
        "csv_bd63ea3a2e6e20ad1b53c945123a4c92_0",
        "csv_d67ea912c34893e3334699df7ae74402_0",
        "csv_38c6f41612ff91d67a6ca7dd8074d7bc_0",
        "csv_88eececc49fded79beb5d65c73719610_3",
    ]


def test_corrected_row_keeps_the_other_rows_identifiers() -> None:
    header = b"timestamp,event_name,payload_stripe_customer_id,payload_value\n"
    original = header + b"2024-09-23,api_calls,cus_1,5\nnot-a-date,api_calls,cus_2,1\n"
    fixed = header + b"2024-09-23,api_calls,cus_1,5\n2024-09-24,api_calls,cus_2,1\n"
    before, after = parse(original), parse(fixed)
    assert before[1].error and before[1].error.code == "timestamp_invalid"
    assert after[0].event.identifier == before[0].event.identifier  # type: ignore[union-attr]
    assert after[1].event is not None


def test_given_identifier_is_kept() -> None:
    data = (
        b"identifier,timestamp,event_name,payload_stripe_customer_id,payload_value\n"
        b"evt-42,2024-09-23,api_calls,cus_1,5\n"
    )
    assert parse(data)[0].event.identifier == "evt-42"  # type: ignore[union-attr]


# --- Records, lines and columns ---------------------------------------------------------------
def test_quoted_newlines_and_line_numbers() -> None:
    data = (
        b"timestamp,event_name,payload_stripe_customer_id,payload_value,payload_note\n"
        b'2024-09-23,api_calls,cus_1,5,"two\nlines"\n'
        b"\n"
        b"2024-09-23,api_calls,cus_2,7,x\n"
    )
    rows = parse(data)
    assert [row.line for row in rows] == [2, 5]
    assert rows[0].event.payload["note"] == "two\nlines"  # type: ignore[union-attr]


def test_payload_columns_and_ignored_columns() -> None:
    data = (
        b"timestamp,event_name,payload_account,payload_tokens,payload_model,line,error_code\n"
        b"2024-09-23,tokens,acct_1,12,gpt,7,meter_event_customer_not_found\n"
    )
    event = parse(data)[0].event
    assert event is not None
    assert dict(event.payload) == {"account": "acct_1", "tokens": "12", "model": "gpt"}
    assert event.raw is not None and event.raw["line"] == "7"


def test_ragged_rows_are_row_errors_and_keep_the_rest() -> None:
    data = (
        b"timestamp,event_name,payload_stripe_customer_id,payload_value\n"
        b"2024-09-23,api_calls,cus_1\n"
        b"2024-09-23,api_calls,cus_1,5,surprise\n"
        b"2024-09-23,api_calls,cus_1,5\n"
    )
    rows = parse(data)
    assert [row.error.code if row.error else "ok" for row in rows] == [
        "row_column_count",
        "row_column_count",
        "ok",
    ]
    assert "surprise" in rows[1].error.message  # type: ignore[union-attr]


def test_missing_fields_are_row_errors() -> None:
    data = (
        b"timestamp,event_name,payload_stripe_customer_id,payload_value\n"
        b",api_calls,cus_1,5\n"
        b"2024-09-23,,cus_1,5\n"
    )
    assert [(row.error.code, row.error.column) for row in parse(data) if row.error] == [
        ("timestamp_missing", "timestamp"),
        ("event_name_missing", "event_name"),
    ]


def test_an_overlong_line_is_one_row_error_and_reading_goes_on() -> None:
    data = (
        b"timestamp,event_name,payload_stripe_customer_id,payload_value\n"
        b"2024-09-23,api_calls,cus_1," + b"9" * 5000 + b"\n"
        b"2024-09-23,api_calls,cus_1,5\n"
    )
    rows = parse(data, max_line=1000)
    assert rows[0].error is not None and rows[0].error.code == "line_too_long"
    assert rows[0].line == 2
    assert rows[1].event is not None and rows[1].line == 3


def test_an_overlong_line_inside_a_quoted_value_refuses_its_record() -> None:
    data = (
        b"timestamp,event_name,payload_stripe_customer_id,payload_value\n"
        b'2024-09-23,api_calls,"cus_1\n' + b"9" * 5000 + b'\nmore",5\n'
        b"2024-09-23,api_calls,cus_1,5\n"
    )
    rows = parse(data, max_line=1000)
    assert [(row.line, row.error.code if row.error else None) for row in rows] == [
        (2, "line_too_long"),
        (5, None),
    ]
