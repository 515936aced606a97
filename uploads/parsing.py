"""Reading usage CSV files: streamed, with bounded memory, and exact about every row.

Format (Stripe's meter-event CSV, see the upload page's help):

* A header row naming the columns. Required: ``timestamp``, ``event_name``, and for the meter
  each row's ``event_name`` selects, ``payload_<customer key>`` and (sum and last meters)
  ``payload_<value key>``. Optional: ``identifier``. Other ``payload_*`` columns go into the
  payload; any other column (such as an error file's ``line``, ``error_code`` and
  ``error_message``) is ignored, so a corrected error file can be uploaded as it is.
* UTF-8 with or without a byte-order mark; RFC 4180 quoting, newlines inside quoted values
  included; ``.csv.gz`` (gzip) too, recognised by its content rather than its name.
* Timestamps: ``yyyy-MM-dd`` (00:00 UTC), ISO 8601 with or without an offset (``Z``,
  ``+05:30``, ``+0530``; without one it is read as UTC), or Unix seconds.

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

import calendar
import csv
import gzip
import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import IO, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from events.ingestion import EventColumns, EventInput

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
# A physical line longer than the limit is replaced by this marker, which cannot occur in
# accepted input (a NUL byte makes the whole file "binary"), and its record is refused.
OVERLONG_MARK = "\x00"
# Cells starting with these characters are formulas to a spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

REQUIRED_COLUMNS = ("timestamp", "event_name")
IDENTIFIER_COLUMN = "identifier"
PAYLOAD_PREFIX = "payload_"

_DATE_ONLY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_UNIX_SECONDS = re.compile(r"-?\d{1,11}")


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


class RawRow(Mapping[str, str]):
    """A record's original values by column, built into a dict only when needed (for a
    rejection): most rows are imported and never need it."""

    __slots__ = ("_fields", "_header")

    def __init__(self, header: list[str], fields: list[str]) -> None:
        self._header = header
        self._fields = fields

    def __getitem__(self, key: str) -> str:
        try:
            index = self._header.index(key)
            return self._fields[index]
        except (ValueError, IndexError):
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._header[: len(self._fields)])

    def __len__(self) -> int:
        return min(len(self._header), len(self._fields))


@dataclass(frozen=True, slots=True)
class ParsedRow:
    """One data record: an event for the core, or an error of its own."""

    line: int
    raw: Mapping[str, str]
    event: EventInput | None = None
    error: RowError | None = None


@dataclass(slots=True)
class Inspection:
    header: list[str]
    event_names: set[str] = field(default_factory=set)
    records: int = 0


# --- Bytes to lines ---------------------------------------------------------------------------
def open_decompressed(binary: IO[bytes]) -> IO[bytes]:
    """The file's content, gunzipped when it is gzip (by its magic bytes, not its name)."""
    buffered = binary if isinstance(binary, io.BufferedReader) else io.BufferedReader(binary)  # type: ignore[arg-type, type-var]
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    return buffered


_BLOCK_BYTES = 1024 * 1024


def text_lines(
    binary: IO[bytes], *, max_bytes: int, max_line_bytes: int, block_bytes: int = _BLOCK_BYTES
) -> Iterator[str]:
    """Decoded physical lines (split at "\\n" only), keeping their line endings, for
    ``csv.reader``.

    Read and decoded in blocks of 1 MB, so the per-line work is one string operation. Memory
    stays bounded by ``max_line_bytes``: a longer line is dropped as it is read and replaced
    by ``OVERLONG_MARK``. Raises ``FileProblem`` for binary content, text that is not UTF-8,
    a corrupt gzip stream, or content beyond ``max_bytes``.
    """
    total = 0
    line_number = 0  # complete lines so far
    pending = b""  # the start of a UTF-8 sequence that the next block completes
    carry = ""  # the current line's start
    carry_bytes = 0
    skipping = False  # inside an over-long line: dropped up to its newline
    short = max(1, max_line_bytes // 4)  # UTF-8: at most 4 bytes a character
    try:
        while block := binary.read(block_bytes):
            total += len(block)
            if total > max_bytes:
                raise FileProblem(_over_limit_reason(max_bytes, decompressed=True))
            if total == len(block) and block.startswith(UTF8_BOM):
                block = block[len(UTF8_BOM) :]
            if pending:
                block, pending = pending + block, b""
            cut = _utf8_complete_end(block)
            block, pending = block[:cut], block[cut:]
            text = _decoded(block, line_number, carry_bytes)
            parts = text.split("\n")
            last = parts.pop()
            if not carry and not skipping and (not parts or max(map(len, parts)) <= short):
                lines = [part + "\n" for part in parts]  # the usual block
            else:
                lines = []
                for part in parts:
                    if skipping:
                        lines.append(OVERLONG_MARK + "\n")
                        skipping = False
                    else:
                        line = carry + part
                        too_long = len(line) > short and len(line.encode()) > max_line_bytes
                        lines.append(OVERLONG_MARK + "\n" if too_long else line + "\n")
                    carry, carry_bytes = "", 0
            line_number += len(lines)
            yield from lines
            if not skipping:
                carry += last
                carry_bytes += len(last.encode())
                if carry_bytes > max_line_bytes:  # drop it as it comes
                    carry, carry_bytes, skipping = "", 0, True
        if pending:
            _decoded(pending, line_number, carry_bytes)  # raises: a truncated sequence
        if skipping:
            yield OVERLONG_MARK + "\n"
        elif carry:
            yield carry
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise FileProblem(f"The gzip-compressed file is damaged: {error}.") from None


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
            f"(byte {byte} of the line). It may be Latin-1 or Windows-1252; save it as "
            f"“CSV UTF-8” and upload it again."
        ) from None


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


def records(lines: Iterable[str], *, max_line_bytes: int) -> Iterator[Record]:
    """CSV records with the physical line each starts on; blank lines are skipped."""
    csv.field_size_limit(max_line_bytes)
    reader = csv.reader(lines, strict=False)
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
    needs: list[str] = []
    for meter in sorted(meters_used, key=lambda m: m.event_name):
        wanted = [meter.customer_column] + ([meter.value_column] if meter.needs_value else [])
        absent = [name for name in wanted if name not in seen]
        if absent:
            needs.append(
                f"{', '.join(absent)} (for meter “{meter.display_name}”, event name "
                f"{meter.event_name})"
            )
    if needs:
        return f"Required columns missing: {'; '.join(needs)}."
    return ""


def inspect(lines: Iterable[str], *, max_line_bytes: int) -> Inspection:
    """A first pass over the whole file: it decodes (so bad text fails before anything is
    imported), reads the header, counts the records and lists the event names used."""
    lines = iter(lines)  # one position, shared by the header's reader and the counting one
    record_iter = records(lines, max_line_bytes=max_line_bytes)
    header = header_read(record_iter)
    if problem := header_problems(header, []):
        raise FileProblem(problem)  # no header at all, most likely: say so before reading on
    inspection = Inspection(header=header)
    event_index = header.index("event_name")  # present: header_problems said so
    names = inspection.event_names
    # The rest is only counted, so it skips ``records``' per-row objects: a reader of its own
    # continues on the same lines right after the header's record. It counts exactly what
    # ``records`` yields: malformed and over-long records too, blank lines not.
    reader = csv.reader(lines, strict=False)
    counted = 0
    raw_names: set[str] = set()  # cleaned once each at the end, not once a row
    while True:
        try:
            for fields in reader:
                if len(fields) < 2 and (not fields or not fields[0].strip()):
                    continue
                counted += 1
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


# --- Records to events ------------------------------------------------------------------------
class TimestampError(ValueError):
    pass


_timestamp_cache: dict[str, datetime] = {}


def parse_timestamp(text: str) -> datetime:
    """``yyyy-MM-dd`` (00:00 UTC), ISO 8601 (UTC when it has no offset) or Unix seconds."""
    cached = _timestamp_cache.get(text)
    if cached is not None:
        return cached
    try:
        if text.isdigit() and len(text) <= 11:
            return datetime.fromtimestamp(int(text), tz=UTC)  # Unix seconds: the usual case
        if match := _DATE_ONLY.fullmatch(text):
            year, month, day = (int(part) for part in match.groups())
            result = datetime(year, month, day, tzinfo=UTC)
        elif _UNIX_SECONDS.fullmatch(text):
            result = datetime.fromtimestamp(int(text), tz=UTC)
        else:
            parsed = datetime.fromisoformat(text)
            result = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise TimestampError(text) from None
    if len(_timestamp_cache) > 100_000:
        _timestamp_cache.clear()
    _timestamp_cache[text] = result
    return result


def normalized_value(text: str) -> str:
    """``1.50``, ``1.5`` and ``15e-1`` are the same value; anything else stays as written."""
    # Fast paths for the usual spellings ("42", "12.5"), which are already normal.
    head, dot, tail = text.partition(".")
    if head.isdigit() and (head == "0" or head[0] != "0"):
        if not dot:
            return head
        if tail.isdigit() and tail[-1] != "0":
            return text
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if not number.is_finite():
        return text
    return format(number.normalize(), "f") if number else "0"


MAX_RUN_KEYS = 4 * 1024 * 1024  # keys in one sorted run of the identical-row counter


class OccurrenceCounter:
    """How many identical rows (by content key) came before each row in the file.

    Memory: 8 bytes per distinct row in sorted numpy runs, merged like a binary counter up to
    ``max_run_keys`` keys a run (a merge never needs more than 32 MB beside them), plus
    an exact count only for the rare keys that do repeat.
    """

    def __init__(self, *, max_run_keys: int = MAX_RUN_KEYS) -> None:
        self._max_run_keys = max_run_keys
        self._runs: list[np.ndarray] = []
        self._repeats: dict[int, int] = {}

    def _seen(self, keys: np.ndarray) -> np.ndarray:
        seen = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            positions = np.searchsorted(run, keys)
            positions[positions == len(run)] = len(run) - 1
            seen |= run[positions] == keys
        return seen

    def count(self, keys: Sequence[int] | np.ndarray) -> list[int]:
        """Occurrences before each key, in order; then remembers them."""
        array = np.asarray(keys, dtype=np.uint64)
        if not len(array):
            return []
        # Group equal keys: a key's occurrences in this chunk are numbered in file order
        # (a stable sort keeps it), after those counted in earlier chunks.
        order = np.argsort(array, kind="stable")
        ordered = array[order]
        starts, sizes = _equal_runs(ordered)
        unique = ordered[starts]
        seen = self._seen(unique)
        before = np.zeros(len(unique), dtype=np.int64)
        for group in np.flatnonzero(seen).tolist():  # rare: keys met in earlier chunks
            before[group] = self._repeats.get(int(unique[group]), 1)
        group_of = np.repeat(np.arange(len(unique)), sizes)
        occurrences = np.empty(len(array), dtype=np.int64)
        occurrences[order] = before[group_of] + np.arange(len(array)) - starts[group_of]
        after = before + sizes
        for group in np.flatnonzero(after > 1).tolist():  # rare: keys that repeat
            self._repeats[int(unique[group])] = int(after[group])
        fresh = unique[~seen]  # sorted, distinct
        if len(fresh):
            self._runs.append(fresh)
            while (
                len(self._runs) > 1
                and len(self._runs[-2]) <= 2 * len(self._runs[-1])
                and len(self._runs[-2]) + len(self._runs[-1]) <= self._max_run_keys
            ):
                # Runs never share keys, so a concatenation sorted in place is their union;
                # np.union1d would need several temporary copies (5M rows: 420 MB peak).
                last = self._runs.pop()
                merged = np.concatenate((self._runs[-1], last))
                del last
                self._runs[-1] = merged
                merged.sort()
        return occurrences.tolist()  # type: ignore[no-any-return]


def _equal_runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal values starts in sorted ``ordered``, and its length."""
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return starts, np.diff(np.r_[starts, len(ordered)])


class Counter(Protocol):
    def count(self, keys: Sequence[int] | np.ndarray) -> list[int]: ...


class ExternalCounter:
    """``OccurrenceCounter``'s answers for a file too large to remember its keys in memory,
    worked out on disk in an extra pass: memory stays bounded whatever the file's size.

    The extra pass makes the same ``count`` calls as the import will, with a ``recorder``:
    it writes each key with its position (the number of keys before it) into one of 256
    bucket files by the key's first byte. ``finish`` sorts each bucket by (key, position),
    numbers the repeats, and files the positions of repeated keys (the only ones whose
    occurrence is not 0) by position range. Then ``count`` answers in order from those
    files. Disk: 16 bytes per key while sorting, 16 per repeated row after.
    """

    _BUCKETS = 256

    def __init__(self, folder: Path, *, range_size: int = 1 << 20) -> None:
        self._folder = folder
        self._range_size = range_size  # positions per file of repeats
        self._position = 0  # keys counted so far, for the recorder and the reader alike
        self._buckets = [folder / f"keys-{n:03d}.bin" for n in range(self._BUCKETS)]
        self._loaded: tuple[int, tuple[np.ndarray, np.ndarray]] = (-1, (np.empty(0), np.empty(0)))
        self.recorder = _KeyRecorder(self)

    def finish(self) -> None:
        """After the extra pass: number the repeats, file them by position range."""
        for path in self._buckets:
            if not path.exists():
                continue
            pairs = np.fromfile(path, dtype=np.uint64).reshape(-1, 2)
            path.unlink()
            order = np.lexsort((pairs[:, 1], pairs[:, 0]))  # by key, then position
            keys, positions = pairs[order, 0], pairs[order, 1]
            del pairs, order
            starts, sizes = _equal_runs(keys)
            ranks = np.arange(len(keys)) - np.repeat(starts, sizes)
            repeated = ranks > 0
            found = np.stack((positions[repeated], ranks[repeated].astype(np.uint64)), axis=1)
            for block in np.unique(found[:, 0] // self._range_size).tolist():
                in_block = found[found[:, 0] // self._range_size == block]
                with (self._folder / f"repeats-{block}.bin").open("ab") as out:
                    in_block.tofile(out)
        self._position = 0

    def _record(self, keys: np.ndarray) -> list[int]:
        positions = np.arange(self._position, self._position + len(keys), dtype=np.uint64)
        self._position += len(keys)
        pairs = np.stack((keys, positions), axis=1)
        first_bytes = (keys >> np.uint64(56)).astype(np.int64)
        for bucket in np.unique(first_bytes).tolist():
            with self._buckets[bucket].open("ab") as out:
                pairs[first_bytes == bucket].tofile(out)
        return [0] * len(keys)

    def count(self, keys: Sequence[int] | np.ndarray) -> list[int]:
        """Occurrences before each key, in order, as worked out by the extra pass."""
        start, end = self._position, self._position + len(keys)
        self._position = end
        occurrences = np.zeros(len(keys), dtype=np.int64)
        size = self._range_size
        for block in range(start // size, (end - 1) // size + 1 if end else 0):
            positions, ranks = self._repeats_in(block)
            low, high = np.searchsorted(positions, [start, end])
            occurrences[positions[low:high].astype(np.int64) - start] = ranks[low:high]
        return occurrences.tolist()  # type: ignore[no-any-return]

    def _repeats_in(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, ranks) of the repeated keys in one position range, by position."""
        if self._loaded[0] != block:
            path = self._folder / f"repeats-{block}.bin"
            pairs = np.fromfile(path, dtype=np.uint64).reshape(-1, 2) if path.exists() else None
            if pairs is None:
                pairs = np.empty((0, 2), dtype=np.uint64)
            pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
            self._loaded = (block, (pairs[:, 0].copy(), pairs[:, 1].astype(np.int64)))
        return self._loaded[1]


class _KeyRecorder:
    """The extra pass's counter: records keys, answers 0 (its identifiers are not used)."""

    def __init__(self, counter: ExternalCounter) -> None:
        self._counter = counter

    def count(self, keys: Sequence[int] | np.ndarray) -> list[int]:
        return self._counter._record(np.asarray(keys, dtype=np.uint64))


class RowBuilder:
    """Turns records into ``ParsedRow``s: events for the core, or the parser's own errors.

    Rows without an identifier get one derived from their content and the number of identical
    rows before them, so re-uploading a file (or a corrected one) never counts a row twice.
    """

    def __init__(
        self,
        header: list[str],
        meters: Mapping[str, MeterKeys],
        occurrences: Counter | None = None,
    ) -> None:
        self.header = header
        self.width = len(header)
        self.meters = meters
        self.timestamp_index = header.index("timestamp")
        self.event_index = header.index("event_name")
        self.identifier_index = (
            header.index(IDENTIFIER_COLUMN) if IDENTIFIER_COLUMN in header else None
        )
        self.payload_columns = [
            (index, name[len(PAYLOAD_PREFIX) :])
            for index, name in enumerate(header)
            if name.startswith(PAYLOAD_PREFIX) and len(name) > len(PAYLOAD_PREFIX)
        ]
        self.occurrences = occurrences or OccurrenceCounter()

    def build(self, chunk: list[Record]) -> list[ParsedRow]:
        """The chunk's rows one by one, in file order (``build_columns`` as objects)."""
        built = self.build_columns(chunk)
        columns = built.columns
        rows = [
            ParsedRow(columns.lines[index], columns.raws[index], event=columns.event_input(index))
            for index in range(len(columns))
        ]
        return sorted([*rows, *built.errors], key=lambda row: row.line)

    def build_columns(self, chunk: list[Record]) -> BuiltChunk:
        """The chunk's events in columns for the core, and the parser's own errors."""
        header, width = self.header, self.width
        errors: list[ParsedRow] = []
        rows: list[list[str]] = []
        lines: list[int] = []
        for record in chunk:
            if record.error:
                errors.append(ParsedRow(record.line, {}, error=record.error))
                continue
            fields = record.fields
            if len(fields) != width:
                if "'" in "".join(fields):
                    fields = [unescape_cell(value) for value in fields]
                extra = fields[width:]
                message = f"This line has {len(fields)} values but the header has {width} columns."
                if extra:
                    message += f" Extra values: {', '.join(extra)[:500]}"
                error = RowError("row_column_count", message)
                errors.append(ParsedRow(record.line, RawRow(header, fields), error=error))
                continue
            rows.append(fields)
            lines.append(record.line)
        # Column by column from here: one list operation per column instead of per-row steps.
        columns = [list(column) for column in zip(*rows, strict=True)] or [[] for _ in header]
        if any("'" in "".join(column) for column in columns):  # rare: escaped cells, maybe
            rows = [[unescape_cell(value) for value in fields] for fields in rows]
            columns = [list(column) for column in zip(*rows, strict=True)]
        names = _stripped(columns[self.event_index])
        texts = _stripped(columns[self.timestamp_index])
        timestamps = _unix_seconds_or_none(texts)
        refused: set[int] = set()
        if not all(names) or None in timestamps:
            for position, (name, timestamp) in enumerate(zip(names, timestamps, strict=True)):
                if timestamp is None or not name:
                    read = self._timestamp_or_refusal(name, texts[position])
                    if isinstance(read, int):
                        timestamps[position] = read
                    else:
                        raw = RawRow(header, rows[position])
                        errors.append(ParsedRow(lines[position], raw, error=read))
                        refused.add(position)
        payload = {key: _stripped(columns[index]) for index, key in self.payload_columns}
        identifiers = (
            _stripped(columns[self.identifier_index])
            if self.identifier_index is not None
            else [""] * len(rows)
        )
        if refused:
            keep = [position for position in range(len(rows)) if position not in refused]
            lines, names, rows = (
                [lines[p] for p in keep],
                [names[p] for p in keep],
                [rows[p] for p in keep],
            )
            timestamps, identifiers = [timestamps[p] for p in keep], [identifiers[p] for p in keep]
            payload = {key: [values[p] for p in keep] for key, values in payload.items()}
        self._derive_identifiers(names, timestamps, identifiers, payload)  # type: ignore[arg-type]
        events = EventColumns(
            names,
            timestamps,  # type: ignore[arg-type]
            identifiers,
            payload,
            lines,
            RawRows(header, rows),
            content_addressed=self.identifier_index is None,
        )
        return BuiltChunk(columns=events, errors=errors, records=len(chunk))

    def _timestamp_or_refusal(self, name: str, timestamp_text: str) -> int | RowError:
        """For a row with an empty event name or a timestamp that is not Unix seconds: its
        Unix seconds (another accepted format), or why the row is refused."""
        if not name:
            return RowError("event_name_missing", "event_name is empty.", "event_name")
        if not timestamp_text:
            return RowError("timestamp_missing", "timestamp is empty.", "timestamp")
        try:
            return unix_seconds(parse_timestamp(timestamp_text))
        except TimestampError:
            return RowError(
                "timestamp_invalid",
                f"The timestamp “{timestamp_text[:100]}” is not a date (yyyy-MM-dd), an ISO "
                f"8601 time (2024-09-23T16:22:25+05:30) or Unix seconds.",
                "timestamp",
            )

    def _derive_identifiers(
        self,
        names: list[str],
        timestamps: list[int],
        identifiers: list[str],
        payload: dict[str, list[str]],
    ) -> None:
        """Fill in the identifiers of rows that have none, from their content and the number
        of identical rows before them in the file: ``csv_`` + 32 hex digits of the BLAKE2b
        digest (16 bytes) of event name, customer, Unix seconds and ``normalized_value`` of
        the value, joined by U+001F, + ``_`` + the occurrence (at most 60 characters)."""
        missing = [position for position, identifier in enumerate(identifiers) if not identifier]
        if not missing:
            return
        # Column by column in Arrow; only the hashing and the rare unusual value are per row.
        taken = pa.array(missing, type=pa.int64())
        row_names = pa.array(names, type=pa.string()).take(taken)
        nothing = pa.array([""] * len(missing), type=pa.string())
        arrays: dict[str, pa.Array] = {}

        def payload_column(key: str) -> pa.Array:
            if key not in payload:
                return nothing
            if key not in arrays:
                arrays[key] = pa.array(payload[key], type=pa.string()).take(taken)
            return arrays[key]

        customers = values = nothing
        for name in set(names):
            meter = self.meters.get(name)
            if meter is None:
                continue  # an unknown meter: no customer or value (the core refuses the row)
            of_meter = pc.equal(row_names, name)
            customers = pc.if_else(of_meter, payload_column(meter.customer_key), customers)
            values = pc.if_else(of_meter, payload_column(meter.value_key), values)
        content = pc.binary_join_element_wise(
            row_names,
            customers,
            pa.array(timestamps, type=pa.int64()).take(taken).cast(pa.string()),
            _normalized_values(values),
            "\x1f",
        )
        blake2b = hashlib.blake2b
        digests = b"".join(
            [
                blake2b(text, digest_size=16).digest()
                for text in content.cast(pa.binary()).to_pylist()
            ]
        )
        keys = np.frombuffer(digests, dtype=">u8")[::2]  # a digest's first 8 bytes
        occurrences = pa.array(self.occurrences.count(keys), type=pa.int64())
        made = pc.binary_join_element_wise(
            "csv_", _hex(digests), "_", occurrences.cast(pa.string()), ""
        ).to_pylist()
        if len(missing) == len(identifiers):
            identifiers[:] = made
        else:
            for position, identifier in zip(missing, made, strict=True):
                identifiers[position] = identifier


def _stripped(column: list[str]) -> list[str]:
    """The column's values without whitespace at either end."""
    return [value.strip() for value in column]


def _unix_seconds_or_none(texts: list[str]) -> list[int | None]:
    """Each text as Unix seconds when it is written as such (ASCII digits, at most 11),
    else None. In Arrow: it is the usual timestamp column."""
    column = pa.array(texts, type=pa.string())
    usual = pc.match_substring_regex(column, r"^[0-9]{1,11}$")
    if pc.all(usual).as_py() is not False:
        return column.cast(pa.int64()).to_pylist()  # type: ignore[no-any-return]
    return pc.if_else(usual, column, None).cast(pa.int64()).to_pylist()  # type: ignore[no-any-return]


_PLAIN_NORMAL = r"^(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$"  # already as normalized_value makes it
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _normalized_values(values: pa.Array) -> pa.Array:
    """``normalized_value`` of each value: in Arrow for empty and already normal values (the
    usual ones), in Python for the rest."""
    usual = pc.or_(pc.equal(values, ""), pc.match_substring_regex(values, _PLAIN_NORMAL))
    if pc.all(usual).as_py():
        return values
    texts = values.to_pylist()
    for position in np.flatnonzero(~usual.to_numpy(zero_copy_only=False)).tolist():
        texts[position] = normalized_value(texts[position])
    return pa.array(texts, type=pa.string())


def _hex(digests: bytes) -> pa.Array:
    """The 16-byte digests laid end to end in ``digests``, as 32 lowercase hex digits each."""
    raw = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 16)
    digits = np.empty((len(raw), 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[raw >> 4]
    digits[:, 1::2] = _HEX_DIGITS[raw & 15]
    offsets = np.arange(0, 32 * (len(raw) + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(len(raw), pa.py_buffer(offsets), pa.py_buffer(digits))


class RawRows(Sequence[Mapping[str, str]]):
    """The original rows of a chunk, as ``RawRow`` mappings made only when asked for (only
    refused rows need them)."""

    __slots__ = ("_header", "_rows")

    def __init__(self, header: list[str], rows: list[list[str]]) -> None:
        self._header = header
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> RawRow:  # type: ignore[override]
        return RawRow(self._header, self._rows[index])


@dataclass(frozen=True, slots=True)
class BuiltChunk:
    columns: EventColumns
    errors: list[ParsedRow]  # the parser's own errors (not UTF-8 CSV, bad timestamp...)
    records: int  # records read, events and errors together


def unix_seconds(moment: datetime) -> int:
    """Whole Unix seconds of an aware time, rounded down like the core's truncation."""
    return calendar.timegm(moment.utctimetuple())


def chunked(iterable: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


def column_for_param(param: str) -> str:
    """The CSV column for a core error's parameter: ``payload[value]`` → ``payload_value``."""
    if param.startswith("payload[") and param.endswith("]"):
        return PAYLOAD_PREFIX + param[len("payload[") : -1]
    return param
