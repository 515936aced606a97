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


# --- What spreadsheets write -------------------------------------------------------------------
def records_of(data: bytes) -> list[list[str]]:
    record_iter = reading.records(lines_of(data), max_line_bytes=MB)
    return [reading.header_read(record_iter), *(record.fields for record in record_iter)]


SPREADSHEET_ROWS = [
    ["timestamp", "event_name", "payload_stripe_customer_id", "payload_value"],
    ["2024-09-23", "api_calls", "cus_1", "2.5"],
    ["2024-09-23", "api_calls", "cus_2, Ltd", "3"],
]


@pytest.mark.parametrize(
    "data",
    [
        # Semicolons: a CSV from a spreadsheet set up where the comma is the decimal separator.
        b"timestamp;event_name;payload_stripe_customer_id;payload_value\n"
        b"2024-09-23;api_calls;cus_1;2.5\n2024-09-23;api_calls;cus_2, Ltd;3\n",
        # Excel's "Unicode text": tab-separated UTF-16LE with a byte-order mark, CRLF.
        "\ufefftimestamp\tevent_name\tpayload_stripe_customer_id\tpayload_value\r\n"
        "2024-09-23\tapi_calls\tcus_1\t2.5\r\n"
        "2024-09-23\tapi_calls\tcus_2, Ltd\t3\r\n".encode("utf-16-le"),
        "\ufefftimestamp\tevent_name\tpayload_stripe_customer_id\tpayload_value\n"
        "2024-09-23\tapi_calls\tcus_1\t2.5\n"
        '2024-09-23\tapi_calls\t"cus_2, Ltd"\t3\n'.encode("utf-16-be"),
    ],
    ids=["semicolons", "excel-unicode-text", "utf-16-be"],
)
def test_semicolon_and_tab_separated_utf16_files_read_like_csv(data: bytes) -> None:
    assert records_of(data) == SPREADSHEET_ROWS
    assert records_of(gzip.compress(data)) == SPREADSHEET_ROWS


def test_a_windows_1252_file_is_named_so_with_how_to_save_it_as_csv_utf8() -> None:
    data = "timestamp,event_name,payload_note\n2024-09-23,api_calls,caf\u00e9 \u2013 50\u20ac\n"
    with pytest.raises(reading.FileProblem) as problem:
        lines_of(data.encode("cp1252"))
    reason = problem.value.reason
    assert "line 2 has bytes that are not valid UTF-8 (byte 25 of the line)" in reason
    assert "It looks like Windows-1252" in reason and "that byte is “é”" in reason
    assert "“CSV UTF-8 (Comma delimited) (*.csv)”" in reason


def test_utf16_that_breaks_off_says_so() -> None:
    data = "\ufefftimestamp\tevent_name\n".encode("utf-16-le") + b"\x00\xd8"  # a lone surrogate
    with pytest.raises(reading.FileProblem) as problem:
        lines_of(data)
    assert "not valid UTF-16" in problem.value.reason and "CSV UTF-8" in problem.value.reason
