"""Reading JSON and JSON-lines event files: the records the pipeline gets, line numbers,
exact numbers, each bad line an error of its own, and pyarrow's fast reading agreeing with
Python's line-by-line reading (the slow answer) on any events."""

from __future__ import annotations

import gzip
import io
import json
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uploads import json_reading
from uploads.json_reading import json_inspect, json_records
from uploads.reading import FileProblem, Record, open_decompressed

LIMIT = 1 << 20


def read(
    data: bytes, file_format: str = "jsonl", *, max_line_bytes: int = LIMIT
) -> tuple[list[str], list[Record]]:
    def content() -> IO[bytes]:
        return open_decompressed(io.BytesIO(data))

    inspection = json_inspect(
        content(),
        file_format=file_format,
        max_bytes=LIMIT * 8,
        max_line_bytes=max_line_bytes,
        max_columns=100,
    )
    records = list(
        json_records(
            content(),
            file_format=file_format,
            header=inspection.header,
            max_bytes=LIMIT * 8,
            max_line_bytes=max_line_bytes,
        )
    )
    assert inspection.records == len(records)
    return inspection.header, records


def event(n: int, **payload: object) -> str:
    return json.dumps(
        {
            "event_name": "api",
            "timestamp": 1764547200 + n,
            "identifier": f"e{n}",
            "payload": {"stripe_customer_id": "cus_1", **payload},
        }
    )


def test_json_lines_become_the_records_of_a_csv_with_the_same_columns() -> None:
    data = "\n".join([event(1, value="2"), "", event(2, value=3, region="eu")]) + "\n"
    header, records = read(gzip.compress(data.encode()))
    assert header == [
        "timestamp",
        "event_name",
        "identifier",
        "payload_stripe_customer_id",
        "payload_value",
        "payload_region",
    ]
    assert records == [
        Record(1, ["1764547201", "api", "e1", "cus_1", "2", ""]),
        Record(3, ["1764547202", "api", "e2", "cus_1", "3", "eu"]),  # line 2 is blank
    ]


def test_numbers_keep_their_exact_text() -> None:
    exact = '{"event_name": "api", "payload": {"value": 12345678901234567890.000001}}'
    _, records = read(f"{event(1, value=0.1)}\n{exact}\n".encode())
    assert [record.fields[-1] for record in records] == ["0.1", "12345678901234567890.000001"]


def test_each_bad_line_is_an_error_of_its_own_line() -> None:
    lines = [
        event(1, value="1"),
        "[1, 2]",
        "{oops",
        '"text"',
        '{"event_name": "x", "payload": 5}',
        event(6, value="6"),
    ]
    _, records = read(("\n".join(lines)).encode())
    codes = [(record.line, record.error.code if record.error else "ok") for record in records]
    assert codes == [
        (1, "ok"),
        (2, "not_an_object"),
        (3, "malformed_json"),
        (4, "not_an_object"),
        (5, "payload_not_object"),
        (6, "ok"),
    ]
    assert "not valid JSON" in str(records[2].error)


def test_a_byte_order_mark_and_an_over_long_line() -> None:
    data = b"\xef\xbb\xbf" + event(1, value="1").encode() + b"\n"
    data += b'{"event_name": "' + b"x" * 5000 + b'"}\n' + event(3, value="3").encode()
    _, records = read(data, max_line_bytes=1000)
    assert [(r.line, r.error.code if r.error else "ok") for r in records] == [
        (1, "ok"),
        (2, "line_too_long"),
        (3, "ok"),
    ]


def test_a_json_array_streams_its_events_by_position() -> None:
    data = json.dumps([json.loads(event(1, value="1.50")), 7, json.loads(event(3))]).encode()
    _, records = read(data, "json")
    assert records[0] == Record(1, ["1764547201", "api", "e1", "cus_1", "1.50"])
    assert records[1].line == 2 and records[1].error and records[1].error.code == "not_an_object"
    assert records[2].fields[-1] == ""  # no value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"event_name": "api"}', "must hold one array of events"),
        (b"[" + event(1).encode() + b", {", "not valid JSON after its event 1"),
        (b"", "empty"),
        (b"  \n", "empty"),
    ],
)
def test_a_json_file_that_cannot_be_read_says_why(data: bytes, reason: str) -> None:
    with pytest.raises(FileProblem, match=reason):
        read(data, "json")


def test_an_empty_json_lines_file_says_so() -> None:
    with pytest.raises(FileProblem, match="holds no events"):
        read(b"\n\n")


scalars = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
events = st.one_of(
    st.fixed_dictionaries(
        {"event_name": st.text(max_size=6), "timestamp": st.integers(0, 2**40)},
        optional={
            "identifier": st.text(max_size=6),
            "payload": st.dictionaries(st.sampled_from(["value", "cus", "r"]), scalars, max_size=3),
        },
    ),
    scalars,
    st.lists(scalars, max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(events, st.sampled_from(["own line", "joined", "split"])), min_size=1, max_size=12
    ),
    st.booleans(),
    st.integers(min_value=0, max_value=60),
)
def test_pyarrow_reads_what_python_reads_line_by_line(
    items: list[tuple[object, str]], blank: bool, cut: int
) -> None:
    """Whatever the lines (an event of its own, two on a line, one split over two), the
    fast reading either agrees with the exact one or declines."""
    lines: list[str] = []
    for item, layout in items:
        text = json.dumps(item)
        if layout == "joined" and lines:
            lines[-1] += " " + text
        elif layout == "split" and 0 < cut < len(text):
            lines += [text[:cut], text[cut:]]
        else:
            lines.append(text)
    if blank:
        lines.insert(len(lines) // 2, "")
    data = ("\n".join(lines) + "\n").encode()
    fast = json_reading._lines_parsed_by_arrow(data, 1, LIMIT)
    slow = json_reading._lines_parsed_one_by_one(data, 1, LIMIT)
    if fast is None:
        return  # declined: read line by line, which is the answer
    assert fast.lines == slow.lines and not slow.errors
    for name in set(fast.columns) | set(slow.columns):
        empty = [""] * len(fast.lines)
        assert fast.columns.get(name, empty) == slow.columns.get(name, empty), name


def test_rfc_3339_timestamps_and_date_values_are_read_fast_as_their_text() -> None:
    data = (
        b'{"timestamp": "2026-11-01T00:00:00Z", "event_name": "a", '
        b'"payload": {"day": "2026-11-01"}}\n'
        b'{"timestamp": "2026-11-01T05:30:00+05:30", "event_name": "a", "payload": {"day": "x"}}\n'
    )
    fast = json_reading._lines_parsed_by_arrow(data, 1, LIMIT)
    assert fast is not None
    assert fast.columns["timestamp"] == ["2026-11-01T00:00:00Z", "2026-11-01T05:30:00+05:30"]
    assert fast.columns["payload_day"] == ["2026-11-01", "x"]


def test_two_events_on_a_line_and_one_split_over_two_are_errors_not_shifted_events() -> None:
    """pyarrow counts as many rows as lines here, but not one a line: read line by line."""
    data = (
        b'{"event_name": "x", "identifier": "a"} {"event_name": "y", "identifier": "b"}\n'
        b'{"event_name": "z", "payload":\n'
        b'{"v": "3"}}\n'
    )
    _, records = read(data)
    assert [(r.line, r.error.code if r.error else "ok") for r in records] == [
        (1, "malformed_json"),
        (2, "malformed_json"),
        (3, "malformed_json"),
    ]


def test_a_field_whose_type_changes_far_into_a_block_is_read_line_by_line() -> None:
    """A payload that is a number, then objects a megabyte on: pyarrow crashed the process
    when the two fell in different chunks of its reading; one chunk a block, it declines."""
    data = b'{"event_name": "a", "payload": 3}\n' + b'{"event_name": "b"}\n' * 60_000
    data += b'{"event_name": "c", "payload": {"v": "1"}}\n'
    assert json_reading._lines_parsed_by_arrow(data, 1, LIMIT) is None
    _, records = read(data)
    assert records[0].error is not None and records[0].error.code == "payload_not_object"
    assert records[-1].fields[-1] == "1" and len(records) == 60_002
