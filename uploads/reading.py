"""Reading usage CSV files: bytes to lines to records, streamed, with bounded memory, and
exact about every line.

Format (Stripe's meter-event CSV, see the upload page's help):

* A header row naming the columns. Required: ``timestamp``, ``event_name``, and for the meter
  each row's ``event_name`` selects, ``payload_<customer key>`` and (sum and last meters)
  ``payload_<value key>``. Optional: ``identifier``. Other ``payload_*`` columns go into the
  payload; any other column (such as an error file's ``line``, ``error_code`` and
  ``error_message``) is ignored, so a corrected error file can be uploaded as it is.
* UTF-8 with or without a byte-order mark, or UTF-16 with one (Excel's "Unicode text");
  RFC 4180 quoting, newlines inside quoted values included; ``.csv.gz`` (gzip) too,
  recognised by its content rather than its name. Text in another encoding is refused with
  the encoding it looks like and how to save it as "CSV UTF-8".
* Values separated by commas, semicolons (a spreadsheet's CSV where the comma is the decimal
  separator) or tabs (Excel's "Unicode text"): the separator the header line uses most.
* Timestamps (read in ``uploads.rows``): ``yyyy-MM-dd`` (00:00 UTC), ISO 8601 with or
  without an offset (``Z``, ``+05:30``, ``+0530``; without one it is read as UTC), or Unix
  seconds.

Line numbers are physical lines of the (decompressed) file, counting from the header as
line 1; a record whose quoted value spans several lines is numbered by its first line.
These are the numbers a text editor shows, and the ones the error table and file use.

Why Python's ``csv`` module rather than pyarrow's streaming reader: pyarrow cannot report
line numbers once quoted newlines are allowed, it aborts the whole stream on a record longer
than its block (the "single 100 MB line" case) and it can only skip ragged rows, not report
them. The ``csv`` module is C code, and each row needs a Python object for the ingestion
core anyway.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import IO, NamedTuple

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
DELIMITERS = (",", ";", "\t")  # the first wins a tie
# A physical line longer than the limit is replaced by this marker, which cannot occur in
# accepted input (a NUL byte makes the whole file "binary"), and its record is refused.
OVERLONG_MARK = "\x00"
# Cells starting with these characters are formulas to a spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

REQUIRED_COLUMNS = ("timestamp", "event_name")
IDENTIFIER_COLUMN = "identifier"
PAYLOAD_PREFIX = "payload_"


class FileProblem(Exception):
    """The whole file is refused; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MeterKeys:
    """What the parser needs to know about the meter an ``event_name`` selects."""

    event_name: str
    display_name: str
    customer_key: str
    value_key: str
    needs_value: bool  # count meters need no value column
    active: bool

    @property
    def customer_column(self) -> str:
        return PAYLOAD_PREFIX + self.customer_key

    @property
    def value_column(self) -> str:
        return PAYLOAD_PREFIX + self.value_key


@dataclass(frozen=True, slots=True)
class RowError:
    code: str
    message: str
    column: str = ""


@dataclass(slots=True)
class Inspection:
    header: list[str]
    event_names: set[str] = field(default_factory=set)
    records: int = 0


# --- Bytes to lines ---------------------------------------------------------------------------
def open_decompressed(binary: IO[bytes]) -> IO[bytes]:
    """The file's content, gunzipped when it is gzip (by its magic bytes, not its name)."""
    buffered = binary if isinstance(binary, io.BufferedReader) else io.BufferedReader(binary)  # type: ignore[type-var]
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    return buffered


class _Utf16AsUtf8:
    """UTF-16 text (its byte-order mark first) read as UTF-8 bytes, block by block."""

    def __init__(self, binary: IO[bytes], head: bytes) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-16")(errors="strict")
        self._binary = binary
        self._head = head  # the first block, read already
        self._units = 0  # UTF-16 bytes decoded so far, for the error message

    def read(self, size: int) -> bytes:
        while True:
            block, self._head = self._head or self._binary.read(size), b""
            try:
                text = self._decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                raise FileProblem(
                    f"The file starts as UTF-16 text but byte {self._units + error.start + 1} "
                    f"is not valid UTF-16. Save it again as “CSV UTF-8” (in Excel: File > "
                    f"Save As > “CSV UTF-8 (Comma delimited)”) and upload that file."
                ) from None
            self._units += len(block)
            if text or not block:
                return text.encode("utf-8")


_BLOCK_BYTES = 1024 * 1024


def text_lines(
    binary: IO[bytes], *, max_bytes: int, max_line_bytes: int, block_bytes: int = _BLOCK_BYTES
) -> Iterator[str]:
    """Decoded physical lines (split at "\\n" only), keeping their line endings, for
    ``csv.reader``.

    Read and decoded in blocks of 1 MB, so the per-line work is one string operation. Memory
    stays bounded by ``max_line_bytes``: a longer line is dropped as it is read and replaced
    by ``OVERLONG_MARK``. UTF-16 with a byte-order mark is read as UTF-8. Raises
    ``FileProblem`` for binary content, text that is not UTF-8 (or broken UTF-16), a corrupt
    gzip stream, or content beyond ``max_bytes``.
    """
    splitter = _LineSplitter(max_bytes=max_bytes, max_line_bytes=max_line_bytes)
    try:
        block = binary.read(block_bytes)
        if block[:2] in UTF16_BOMS:  # Excel's "Unicode text": read on as UTF-8
            utf16 = _Utf16AsUtf8(binary, block)
            read: Callable[[int], bytes] = utf16.read
            block = read(block_bytes)
        else:
            read = binary.read
        while block:
            yield from splitter.lines(block)
            block = read(block_bytes)
        yield from splitter.last_lines()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise FileProblem(f"The gzip-compressed file is damaged: {error}.") from None


class _LineSplitter:
    """``text_lines``' state from one block to the next: what was read, the end of a UTF-8
    sequence or of a line that the next block completes, and whether an over-long line is
    being dropped."""

    def __init__(self, *, max_bytes: int, max_line_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        self.short = max(1, max_line_bytes // 4)  # UTF-8: at most 4 bytes a character
        self.total = 0
        self.line_number = 0  # complete lines so far
        self.pending = b""  # the start of a UTF-8 sequence that the next block completes
        self.carry = ""  # the current line's start
        self.carry_bytes = 0
        self.skipping = False  # inside an over-long line: dropped up to its newline

    def lines(self, block: bytes) -> list[str]:
        """The lines that ``block`` completes."""
        parts = self._decoded(block).split("\n")
        last = parts.pop()
        if (
            not self.carry
            and not self.skipping
            and (not parts or max(map(len, parts)) <= self.short)
        ):
            lines = [part + "\n" for part in parts]  # the usual block
        else:
            lines = self._lines_continued(parts)
        self.line_number += len(lines)
        if not self.skipping:
            self.carry += last
            self.carry_bytes += len(last.encode())
            if self.carry_bytes > self.max_line_bytes:  # drop it as it comes
                self.carry, self.carry_bytes, self.skipping = "", 0, True
        return lines

    def last_lines(self) -> list[str]:
        """After the last block: the line it left unfinished, if any."""
        if self.pending:
            _decoded(self.pending, self.line_number, self.carry_bytes)  # raises: truncated
        if self.skipping:
            return [OVERLONG_MARK + "\n"]
        return [self.carry] if self.carry else []

    def _decoded(self, block: bytes) -> str:
        self.total += len(block)
        if self.total > self.max_bytes:
            raise FileProblem(_over_limit_reason(self.max_bytes, decompressed=True))
        if self.total == len(block) and block.startswith(UTF8_BOM):
            block = block[len(UTF8_BOM) :]
        if self.pending:
            block, self.pending = self.pending + block, b""
        cut = _utf8_complete_end(block)
        block, self.pending = block[:cut], block[cut:]
        return _decoded(block, self.line_number, self.carry_bytes)

    def _lines_continued(self, parts: list[str]) -> list[str]:
        """The lines of a block that continues a line or holds a long one, checked each."""
        carry, skipping = self.carry, self.skipping
        short, max_line_bytes = self.short, self.max_line_bytes
        lines = []
        for part in parts:
            if skipping:
                lines.append(OVERLONG_MARK + "\n")
                skipping = False
            else:
                line = carry + part
                too_long = len(line) > short and len(line.encode()) > max_line_bytes
                lines.append(OVERLONG_MARK + "\n" if too_long else line + "\n")
            carry = ""
        if parts:
            self.carry, self.carry_bytes = "", 0
        self.skipping = skipping
        return lines


def _utf8_complete_end(block: bytes) -> int:
    """Where ``block`` stops holding complete UTF-8 sequences (a sequence split between two
    blocks is decoded with the next one)."""
    end = len(block)
    start = end - 1
    while start >= 0 and end - start < 4 and block[start] & 0xC0 == 0x80:
        start -= 1
    if start < 0:
        return end
    lead = block[start]
    size = (
        2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4 if lead & 0xF8 == 0xF0 else 1
    )
    return start if start + size > end else end


def _decoded(block: bytes, lines_before: int, carry_bytes: int) -> str:
    """``block`` as text; ``FileProblem`` naming the line for binary or non-UTF-8 content."""
    nul = block.find(b"\x00")
    if nul >= 0:
        line = lines_before + block.count(b"\n", 0, nul) + 1
        raise FileProblem(
            f"This is not a CSV file: line {line} contains binary data (a NUL byte). Upload a "
            f"CSV text file or a gzip-compressed one (.csv.gz)."
        )
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError as error:
        line = lines_before + block.count(b"\n", 0, error.start) + 1
        line_start = block.rfind(b"\n", 0, error.start) + 1
        byte = error.start - line_start + (carry_bytes if line_start == 0 else 0) + 1
        raise FileProblem(
            f"The file is not UTF-8 text: line {line} has bytes that are not valid UTF-8 "
            f"(byte {byte} of the line). {_encoding_guess(block, error.start)} In Excel, "
            f"choose File > Save As, pick “CSV UTF-8 (Comma delimited) (*.csv)”, and upload "
            f"the new file; other programs call it “UTF-8” in their export or save options."
        ) from None


def _encoding_guess(block: bytes, at: int) -> str:
    """The encoding text that is not UTF-8 looks like, said with the character it reads."""
    sample = block[max(0, at - 20) : at + 20]
    try:
        text = block[at : at + 1].decode("cp1252")
        sample.decode("cp1252")
    except UnicodeDecodeError:
        return "It looks like text in an 8-bit encoding such as Latin-1 (ISO-8859-1)."
    if any(0x80 <= byte <= 0x9F for byte in block):
        name = "Windows-1252 (what Excel on Windows writes as “CSV (Comma delimited)”)"
    else:
        name = "Windows-1252 or Latin-1 (ISO-8859-1)"
    return f"It looks like {name}, where that byte is “{text}”."


def _over_limit_reason(max_bytes: int, *, decompressed: bool) -> str:
    where = "Once decompressed, the file is" if decompressed else "The file is"
    return (
        f"{where} larger than the limit of {format_bytes(max_bytes)}. Split it into "
        f"smaller files and upload each one."
    )


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


class Record(NamedTuple):
    line: int
    fields: list[str]
    error: RowError | None = None


def delimiter_of(header_line: str) -> str:
    """The separator a header line uses: the one of ``DELIMITERS`` it holds most of."""
    counts = [header_line.count(delimiter) for delimiter in DELIMITERS]
    return DELIMITERS[counts.index(max(counts))]


def with_delimiter(lines: Iterable[str]) -> tuple[Iterator[str], str]:
    """``lines`` as one iterator (its first line put back), and the first line's separator."""
    iterator = iter(lines)
    first = next(iterator, "")
    return chain([first], iterator), delimiter_of(first)


def records(
    lines: Iterable[str], *, max_line_bytes: int, delimiter: str | None = None
) -> Iterator[Record]:
    """CSV records with the physical line each starts on; blank lines are skipped. The
    separator is the header line's (``delimiter_of``) unless given."""
    csv.field_size_limit(max_line_bytes)
    if delimiter is None:
        lines, delimiter = with_delimiter(lines)
    reader = csv.reader(lines, strict=False, delimiter=delimiter)
    start = 1  # the line the next record starts on
    while True:
        try:
            for fields in reader:
                line, start = start, reader.line_num + 1
                if len(fields) < 2 and (not fields or not fields[0].strip()):
                    continue
                # The mark stands for a whole physical line: alone on a one-line record,
                # anywhere in a record that spans lines (a quoted newline).
                if (fields[0] == OVERLONG_MARK and len(fields) == 1) or (
                    start - line > 1 and OVERLONG_MARK in "".join(fields)
                ):
                    yield Record(
                        line,
                        [],
                        RowError(
                            "line_too_long",
                            f"This line is longer than {format_bytes(max_line_bytes)}, the "
                            f"longest line accepted; it was skipped.",
                        ),
                    )
                    continue
                yield Record(line, fields)
            return
        except csv.Error as error:
            yield Record(
                start, [], RowError("malformed_row", f"This line is not valid CSV: {error}.")
            )
            start = reader.line_num + 1


def unescape_cell(value: str) -> str:
    """Undo ``escape_cell``, so a downloaded error file can be uploaded as it is."""
    if len(value) > 1 and value[0] == "'" and value[1] in "=+-@\t\r":
        return value[1:]
    return value


def escape_cell(value: str) -> str:
    """Neutralise spreadsheet formulas (OWASP "CSV injection"): a cell starting with
    ``= + - @`` tab or CR gets a leading quote. Plain numbers such as ``-12.5`` stay as they
    are: a spreadsheet reads them as numbers, never as formulas, and value columns need them.
    """
    if value.startswith(FORMULA_PREFIXES) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def header_read(record_iter: Iterator[Record]) -> list[str]:
    for record in record_iter:
        if record.error:
            raise FileProblem(
                f"The header row (line {record.line}) cannot be read: {record.error.message}"
            )
        return [unescape_cell(name).strip() for name in record.fields]
    raise FileProblem("The file is empty: it has no header row and no data rows.")


def header_problems(header: list[str], meters_used: Iterable[MeterKeys]) -> str:
    """Why the header cannot serve the file's rows, in plain words ("" when it can)."""
    seen: set[str] = set()
    repeated = [name for name in header if name in seen or seen.add(name)]  # type: ignore[func-returns-value]
    if repeated:
        return f"The header names these columns more than once: {', '.join(sorted(set(repeated)))}."
    missing = [name for name in REQUIRED_COLUMNS if name not in seen]
    if missing:
        return (
            f"Required columns missing: {', '.join(missing)}. The first line must be a "
            f"header naming the columns, such as "
            f"timestamp,event_name,payload_stripe_customer_id,payload_value."
        )
    meters = sorted(meters_used, key=lambda m: m.event_name)
    lacking = meter_columns_missing(header, meters)
    needs = [
        f"{', '.join(lacking[meter.event_name])} (for meter “{meter.display_name}”, event name "
        f"{meter.event_name})"
        for meter in meters
        if meter.event_name in lacking
    ]
    if needs:
        return f"Required columns missing: {'; '.join(needs)}."
    return ""


def meter_columns_missing(
    header: Iterable[str], meters: Iterable[MeterKeys]
) -> dict[str, list[str]]:
    """The columns each meter's rows need that the header lacks, by event name (only the
    meters that lack some)."""
    present = set(header)
    missing: dict[str, list[str]] = {}
    for meter in meters:
        wanted = [meter.customer_column] + ([meter.value_column] if meter.needs_value else [])
        if absent := [name for name in wanted if name not in present]:
            missing[meter.event_name] = absent
    return missing


def meter_columns_missing_error(meter: MeterKeys, absent: list[str]) -> RowError:
    """The error of a row whose meter needs columns the file lacks (the other meters' rows
    of the file import)."""
    what = {meter.customer_column: "customer ID", meter.value_column: "value"}
    needs = " and ".join(f"{name} (the {what[name]})" for name in absent)
    return RowError(
        "column_missing",
        f"This file has no {needs} column, which rows of meter “{meter.display_name}” "
        f"(event name {meter.event_name}) need. Add the column with each row's "
        f"{' and '.join(what[name] for name in absent)}, and upload these rows again.",
        absent[0],
    )


def columns_over_limit(header: list[str], max_columns: int) -> str:
    """Why a header is too wide ("" when it is not)."""
    if len(header) <= max_columns:
        return ""
    return (
        f"The header has {len(header):,} columns; at most {max_columns:,} are accepted. Keep "
        f"only the columns the import reads (timestamp, event_name, identifier and the "
        f"payload_ columns your meters use), delete the others, and upload the file again."
    )


def inspect(
    lines: Iterable[str],
    *,
    max_line_bytes: int,
    max_columns: int | None = None,
    pulse: Callable[[], None] = lambda: None,
) -> Inspection:
    """A first pass over the whole file: it decodes (so bad text fails before anything is
    imported), reads the header, counts the records and lists the event names used.
    ``pulse`` is called every few hundred records (a job's heartbeat, see ``uploads.pulse``).
    """
    # One position, shared by the header's reader and the counting one.
    lines, delimiter = with_delimiter(lines)
    record_iter = records(lines, max_line_bytes=max_line_bytes, delimiter=delimiter)
    header = header_read(record_iter)
    if max_columns is not None and (problem := columns_over_limit(header, max_columns)):
        raise FileProblem(problem)  # at once: before reading a wide file's rows
    if problem := header_problems(header, []):
        raise FileProblem(problem)  # no header at all, most likely: say so before reading on
    inspection = Inspection(header=header)
    event_index = header.index("event_name")  # present: header_problems said so
    names = inspection.event_names
    # The rest is only counted, so it skips ``records``' per-row objects: a reader of its own
    # continues on the same lines right after the header's record. It counts exactly what
    # ``records`` yields: malformed and over-long records too, blank lines not.
    reader = csv.reader(lines, strict=False, delimiter=delimiter)
    counted = 0
    pulse_mask = 255 if len(header) <= 256 else 0  # a wide file's rows are slow: each row
    raw_names: set[str] = set()  # cleaned once each at the end, not once a row
    while True:
        try:
            for fields in reader:
                if len(fields) < 2 and (not fields or not fields[0].strip()):
                    continue
                counted += 1
                if not counted & pulse_mask:
                    pulse()
                if len(fields) > event_index and len(raw_names) < 10_000:
                    raw_names.add(fields[event_index])
            break
        except csv.Error:
            counted += 1
    names.update(unescape_cell(name).strip() for name in raw_names if OVERLONG_MARK not in name)
    inspection.records = counted
    if inspection.records == 0:
        raise FileProblem("The file has a header row but no data rows.")
    return inspection


def chunked(iterable: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk
