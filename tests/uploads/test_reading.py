"""The CSV reader on its own (bytes to lines, records, header): no database, no worker."""

from __future__ import annotations

import gzip
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uploads import reading

MB = 1024 * 1024
METERS = {
    "api_calls": reading.MeterKeys(
        "api_calls", "API calls", "stripe_customer_id", "value", True, True
    ),
    "tokens": reading.MeterKeys("tokens", "Tokens", "account", "tokens", True, True),
}


def lines_of(data: bytes, *, max_bytes: int = 10 * MB, max_line: int = MB) -> list[str]:
    content = reading.open_decompressed(io.BytesIO(data))
    return list(reading.text_lines(content, max_bytes=max_bytes, max_line_bytes=max_line))


# --- Bytes to lines ---------------------------------------------------------------------------
def test_bom_and_gzip() -> None:
    data = b"\xef\xbb\xbftimestamp,event_name\n2024-09-23,api_calls\n"
    assert lines_of(data)[0] == "timestamp,event_name\n"
    assert lines_of(gzip.compress(data)) == lines_of(data)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"timestamp,event_name\n\x00\x01\x02\x03", "not a CSV file"),
        ("timestamp,event_name\n2024-09-23,caf\u00e9\n".encode("latin-1"), "not UTF-8"),
        (b"\x1f\x8b\x08\x00garbage", "damaged"),
    ],
)
def test_whole_file_problems(data: bytes, words: str) -> None:
    with pytest.raises(reading.FileProblem) as problem:
        lines_of(data)
    assert words in problem.value.reason


def test_decompressed_size_is_limited() -> None:
    data = gzip.compress(b"timestamp,event_name\n" + b"2024-09-23,api_calls\n" * 1000)
    with pytest.raises(reading.FileProblem) as problem:
        lines_of(data, max_bytes=5000)
    assert "larger than the limit" in problem.value.reason


@given(
    lines=st.lists(st.text(alphabet='ab,é€😀\r"', max_size=30), max_size=30),
    final_newline=st.booleans(),
    block=st.integers(min_value=1, max_value=40),
    max_line=st.integers(min_value=8, max_value=60),
)
def test_lines_read_in_blocks_are_the_file_lines(
    lines: list[str], final_newline: bool, block: int, max_line: int
) -> None:
    """Whatever the block size: every physical line once, split at \\n only, multi-byte
    characters split between blocks decoded whole, over-long lines replaced by the mark."""
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    content = io.BytesIO(text.encode())
    read = list(
        reading.text_lines(content, max_bytes=10 * MB, max_line_bytes=max_line, block_bytes=block)
    )
    expected = [line + "\n" for line in text.split("\n")]
    expected[-1] = expected[-1][:-1]
    if not expected[-1]:
        expected.pop()
    expected = [
        reading.OVERLONG_MARK + "\n" if len(line.rstrip("\n").encode()) > max_line else line
        for line in expected
    ]
    assert read == expected


def test_not_utf8_names_the_line_across_blocks() -> None:
    data = b"timestamp,event_name\n" + "2024-09-23,caf\u00e9\n".encode("latin-1") * 3
    with pytest.raises(reading.FileProblem) as problem:
        list(reading.text_lines(io.BytesIO(data), max_bytes=MB, max_line_bytes=MB, block_bytes=7))
    assert (
        "line 2 has bytes" in problem.value.reason
        and "(byte 15 of the line)" in problem.value.reason
    )


# --- Header and inspection --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"timestamp,event_name,payload_stripe_customer_id\n", "no data rows"),
        (b"2024-09-23,api_calls,cus_1,5\n", "Required columns missing: timestamp, event_name"),
        (b"2024-09-23,api_calls,cus_1,5\n" * 3, "The first line must be a header"),
        (b"timestamp,timestamp,event_name\n1,2,3\n", "more than once"),
    ],
)
def test_inspection_problems(data: bytes, words: str) -> None:
    with pytest.raises(reading.FileProblem) as problem:
        header = reading.inspect(lines_of(data), max_line_bytes=MB)
        raise reading.FileProblem(reading.header_problems(header.header, []))
    assert words in problem.value.reason


def test_header_problems_name_the_meter_columns() -> None:
    header = ["timestamp", "event_name", "payload_stripe_customer_id"]
    reason = reading.header_problems(header, [METERS["api_calls"], METERS["tokens"]])
    assert "payload_value (for meter “API calls”" in reason
    assert "payload_account, payload_tokens (for meter “Tokens”" in reason
    assert reading.header_problems([*header, "payload_value"], [METERS["api_calls"]]) == ""
    assert "more than once" in reading.header_problems(["timestamp", "timestamp"], [])


def test_inspection_lists_event_names_and_counts_records() -> None:
    data = b"timestamp,event_name\n2024-09-23,a\n2024-09-23,b\n2024-09-23,a\n"
    inspection = reading.inspect(lines_of(data), max_line_bytes=MB)
    assert inspection.records == 3
    assert inspection.event_names == {"a", "b"}


# --- Error-file cells -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cell", "escaped"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+cmd", "'+cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-2+3", "'-2+3"),
        ("\tx", "'\tx"),
        ("-12.5", "-12.5"),  # a plain negative number stays usable
        ("-1e3", "-1e3"),
        ("cus_1", "cus_1"),
    ],
)
def test_formula_cells_are_escaped_and_round_trip(cell: str, escaped: str) -> None:
    assert reading.escape_cell(cell) == escaped
    assert reading.unescape_cell(reading.escape_cell(cell)) == cell
