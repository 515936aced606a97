"""Building rows from records: a chunk of CSV records becomes events in columns for the
ingestion core (``EventColumns``), and the rows the parser refuses itself become errors.

Work is column by column (one list or Arrow operation per column rather than per-row steps).
Rows without an identifier get one derived in Arrow from the row's content and the number
of identical rows before it in the file (``uploads.counters``), so rows imported before are
not counted twice. For new usage (``Upload.rows_without_identifier``) each also gets a
fallback of the upload and the row's line, taken when the derived one is stored already, so
every row counts.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from events.ingestion import EventColumns, EventInput
from uploads.counters import Counter, OccurrenceCounter
from uploads.reading import (
    IDENTIFIER_COLUMN,
    PAYLOAD_PREFIX,
    MeterKeys,
    Record,
    RowError,
    meter_columns_missing,
    meter_columns_missing_error,
    unescape_cell,
)
from usage_portal import arrow

_DATE_ONLY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_UNIX_SECONDS = re.compile(r"-?\d{1,11}")

Item = TypeVar("Item")


class RawRow(Mapping[str, str]):
    """A record's original values by column, built into a dict only when needed (for a
    rejection): most rows are imported and never need it."""

    __slots__ = ("_fields", "_header", "_positions")

    def __init__(
        self, header: list[str], fields: list[str], positions: Mapping[str, int] | None = None
    ) -> None:
        self._header = header
        self._fields = fields
        # Each column's position, shared by a chunk's rows: a look-up by name takes the same
        # time however wide the file is (``header.index`` made a wide file's rejected rows
        # quadratic in its column count).
        self._positions = column_positions(header) if positions is None else positions

    def __getitem__(self, key: str) -> str:
        try:
            return self._fields[self._positions[key]]
        except (KeyError, IndexError):
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._header[: len(self._fields)])

    def __len__(self) -> int:
        return min(len(self._header), len(self._fields))


def column_positions(header: list[str]) -> dict[str, int]:
    """Each column name's position in ``header`` (the first, should a name repeat)."""
    positions: dict[str, int] = {}
    for position, name in enumerate(header):
        positions.setdefault(name, position)
    return positions


@dataclass(frozen=True, slots=True)
class ParsedRow:
    """One data record: an event for the core, or an error of its own."""

    line: int
    raw: Mapping[str, str]
    event: EventInput | None = None
    error: RowError | None = None


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


class RowBuilder:
    """Turns records into ``ParsedRow``s: events for the core, or the parser's own errors.

    Rows without an identifier get one derived from their content and the number of
    identical rows before them, so re-uploading a file (or a corrected one) never counts a row
    twice. With ``line_prefix`` (new usage: every row counts) each such row also gets a
    fallback, ``line_prefix`` + its line, which the pipeline uses when the derived one is
    taken already: so a row of new usage is always counted, and the first rows with a given
    content keep the derived identifier a later corrected copy of their file is matched by.
    """

    def __init__(
        self,
        header: list[str],
        meters: Mapping[str, MeterKeys],
        occurrences: Counter | None = None,
        *,
        line_prefix: str | None = None,
    ) -> None:
        self.line_prefix = line_prefix
        self.header = header
        self.positions = column_positions(header)
        self.width = len(header)
        self.meters = meters
        self.timestamp_index = self.positions["timestamp"]
        self.event_index = self.positions["event_name"]
        self.identifier_index = self.positions.get(IDENTIFIER_COLUMN)
        self.payload_columns = [
            (index, name[len(PAYLOAD_PREFIX) :])
            for index, name in enumerate(header)
            if name.startswith(PAYLOAD_PREFIX) and len(name) > len(PAYLOAD_PREFIX)
        ]
        self.occurrences = occurrences or OccurrenceCounter()
        # The rows of a meter whose columns the file lacks fail; the other meters' import.
        active = [meter for meter in meters.values() if meter.active]
        self.missing_errors = {
            name: meter_columns_missing_error(meters[name], absent)
            for name, absent in meter_columns_missing(header, active).items()
        }

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
        rows, lines, errors = self._rows_of(chunk)
        # Column by column from here: one list operation per column instead of per-row steps.
        rows, columns = _columns_of(rows, width=self.width)
        names = _stripped(columns[self.event_index])
        timestamps, refusals = self._timestamps_read(
            names, _stripped(columns[self.timestamp_index]), rows, lines
        )
        refusals += self._column_missing_refusals(names, rows, lines, refusals)
        errors += refusals
        payload = {key: _stripped(columns[index]) for index, key in self.payload_columns}
        identifiers = (
            _stripped(columns[self.identifier_index])
            if self.identifier_index is not None
            else [""] * len(rows)
        )
        if refusals:
            refused = {row.line for row in refusals}  # a record's first line names it
            keep = [position for position, line in enumerate(lines) if line not in refused]
            lines, names, rows = _taken(lines, keep), _taken(names, keep), _taken(rows, keep)
            timestamps, identifiers = _taken(timestamps, keep), _taken(identifiers, keep)
            payload = {key: _taken(values, keep) for key, values in payload.items()}
        fallbacks = (
            _line_identifiers(self.line_prefix, lines, identifiers)
            if self.line_prefix is not None
            else {}
        )
        self._derive_identifiers(names, timestamps, identifiers, payload)  # type: ignore[arg-type]
        events = EventColumns(
            names,
            timestamps,  # type: ignore[arg-type]
            identifiers,
            payload,
            lines,
            RawRows(self.header, rows, self.positions),
            content_addressed=self.identifier_index is None,
        )
        return BuiltChunk(columns=events, errors=errors, records=len(chunk), fallbacks=fallbacks)

    def _rows_of(self, chunk: list[Record]) -> tuple[list[list[str]], list[int], list[ParsedRow]]:
        """The chunk's records with as many values as the header has columns (their fields
        and lines), and the errors of the others, in file order."""
        width = self.width
        errors: list[ParsedRow] = []
        rows: list[list[str]] = []
        lines: list[int] = []
        for record in chunk:
            if record.error:
                errors.append(ParsedRow(record.line, {}, error=record.error))
            elif len(record.fields) != width:
                errors.append(self._column_count_error(record))
            else:
                rows.append(record.fields)
                lines.append(record.line)
        return rows, lines, errors

    def _column_count_error(self, record: Record) -> ParsedRow:
        """The error of a record with more or fewer values than the header has columns."""
        fields, width = record.fields, self.width
        if "'" in "".join(fields):
            fields = [unescape_cell(value) for value in fields]
        extra = fields[width:]
        message = f"This line has {len(fields)} values but the header has {width} columns."
        if extra:
            message += f" Extra values: {', '.join(extra)[:500]}"
        error = RowError("row_column_count", message)
        return ParsedRow(record.line, RawRow(self.header, fields, self.positions), error=error)

    def _timestamps_read(
        self, names: list[str], texts: list[str], rows: list[list[str]], lines: list[int]
    ) -> tuple[list[int | None], list[ParsedRow]]:
        """Each row's timestamp in Unix seconds, and the errors of the rows refused for their
        timestamp or event name (their timestamps stay None)."""
        timestamps = _unix_seconds_or_none(texts)
        refusals: list[ParsedRow] = []
        if all(names) and None not in timestamps:
            return timestamps, refusals  # the usual chunk
        for position, (name, timestamp) in enumerate(zip(names, timestamps, strict=True)):
            if timestamp is None or not name:
                read = self._timestamp_or_refusal(name, texts[position])
                if isinstance(read, int):
                    timestamps[position] = read
                else:
                    raw = RawRow(self.header, rows[position], self.positions)
                    refusals.append(ParsedRow(lines[position], raw, error=read))
        return timestamps, refusals

    def _column_missing_refusals(
        self, names: list[str], rows: list[list[str]], lines: list[int], refused: list[ParsedRow]
    ) -> list[ParsedRow]:
        """The errors of the rows (not ``refused`` already) whose meter needs columns the
        file lacks."""
        missing = self.missing_errors
        if not missing or missing.keys().isdisjoint(names):
            return []
        already = {row.line for row in refused}
        return [
            ParsedRow(
                lines[position],
                RawRow(self.header, rows[position], self.positions),
                error=error,
            )
            for position, name in enumerate(names)
            if (error := missing.get(name)) is not None and lines[position] not in already
        ]

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
        taken = arrow.int64s(missing)
        row_names = arrow.strings(names).take(taken)
        customers, values = self._customers_and_values(set(names), row_names, payload, taken)
        content = pc.binary_join_element_wise(
            row_names,
            customers,
            arrow.int64s(timestamps).take(taken).cast(pa.string()),
            _normalized_values(values),
            arrow.text("\x1f"),
        )
        digests = _digests(content)
        keys = np.frombuffer(digests, dtype=">u8")[::2]  # a digest's first 8 bytes
        occurrences = arrow.int64s(self.occurrences.count(keys))
        made = pc.binary_join_element_wise(
            arrow.text("csv_"),
            _hex(digests),
            arrow.text("_"),
            occurrences.cast(pa.string()),
            arrow.EMPTY,
        ).to_pylist()
        if len(missing) == len(identifiers):
            identifiers[:] = made
        else:
            for position, identifier in zip(missing, made, strict=True):
                identifiers[position] = identifier

    def _customers_and_values(
        self,
        event_names: set[str],
        row_names: pa.Array,
        payload: dict[str, list[str]],
        taken: pa.Array,
    ) -> tuple[pa.Array, pa.Array]:
        """The customer and the value of each row in ``taken``, from the payload columns its
        meter names ("" for a meter not known, or a column the file lacks)."""
        nothing = arrow.strings([""] * len(taken))
        arrays: dict[str, pa.Array] = {}

        def payload_column(key: str) -> pa.Array:
            if key not in payload:
                return nothing
            if key not in arrays:
                arrays[key] = arrow.strings(payload[key]).take(taken)
            return arrays[key]

        customers = values = nothing
        for name in event_names:
            meter = self.meters.get(name)
            if meter is None:
                continue  # an unknown meter: no customer or value (the core refuses the row)
            of_meter = pc.equal(row_names, arrow.text(name))
            customers = pc.if_else(of_meter, payload_column(meter.customer_key), customers)
            values = pc.if_else(of_meter, payload_column(meter.value_key), values)
        return customers, values


def _line_identifiers(prefix: str, lines: list[int], identifiers: list[str]) -> dict[int, str]:
    """{position: ``prefix`` + the row's line (a record's first line)} of the rows that have
    no identifier: the same on every run of the upload."""
    return {
        position: prefix + str(lines[position])
        for position, identifier in enumerate(identifiers)
        if not identifier
    }


def _columns_of(rows: list[list[str]], *, width: int) -> tuple[list[list[str]], list[list[str]]]:
    """The rows, and their values column by column, escaped cells unescaped."""
    columns = [list(column) for column in zip(*rows, strict=True)] or [[] for _ in range(width)]
    if any("'" in "".join(column) for column in columns):  # rare: escaped cells, maybe
        rows = [[unescape_cell(value) for value in fields] for fields in rows]
        columns = [list(column) for column in zip(*rows, strict=True)]
    return rows, columns


def _taken(values: list[Item], positions: list[int]) -> list[Item]:
    return [values[position] for position in positions]


def _digests(content: pa.Array) -> bytes:
    """The 16-byte BLAKE2b digests of the texts, laid end to end."""
    blake2b = hashlib.blake2b
    return b"".join(
        [blake2b(text, digest_size=16).digest() for text in content.cast(pa.binary()).to_pylist()]
    )


def _stripped(column: list[str]) -> list[str]:
    """The column's values without whitespace at either end."""
    return [value.strip() for value in column]


def _unix_seconds_or_none(texts: list[str]) -> list[int | None]:
    """Each text as Unix seconds when it is written as such (ASCII digits, at most 11),
    else None. In Arrow: it is the usual timestamp column."""
    column = arrow.strings(texts)
    usual = pc.match_substring_regex(column, r"^[0-9]{1,11}$")
    if pc.all(usual).as_py() is not False:
        return column.cast(pa.int64()).to_pylist()
    return pc.if_else(usual, column, arrow.text(None)).cast(pa.int64()).to_pylist()


_PLAIN_NORMAL = r"^(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$"  # already as normalized_value makes it
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _normalized_values(values: pa.Array) -> pa.Array:
    """``normalized_value`` of each value: in Arrow for empty and already normal values (the
    usual ones), in Python for the rest."""
    usual = pc.or_(pc.equal(values, arrow.EMPTY), pc.match_substring_regex(values, _PLAIN_NORMAL))
    if pc.all(usual).as_py():
        return values
    texts = values.to_pylist()
    for position in pc.indices_nonzero(pc.invert(usual)).to_pylist():
        texts[position] = normalized_value(texts[position])
    return arrow.strings(texts)


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

    __slots__ = ("_header", "_positions", "_rows")

    def __init__(
        self, header: list[str], rows: list[list[str]], positions: Mapping[str, int]
    ) -> None:
        self._header = header
        self._rows = rows
        self._positions = positions

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> RawRow:  # type: ignore[override]
        return RawRow(self._header, self._rows[index], self._positions)


@dataclass(frozen=True, slots=True)
class BuiltChunk:
    columns: EventColumns
    errors: list[ParsedRow]  # the parser's own errors (not UTF-8 CSV, bad timestamp...)
    records: int  # records read, events and errors together
    # New usage: {position in columns: the row's own identifier} for rows whose identifier
    # was derived, used when the derived one is taken (see ``RowBuilder``).
    fallbacks: dict[int, str] = field(default_factory=dict)


def unix_seconds(moment: datetime) -> int:
    """Whole Unix seconds of an aware time, rounded down like the core's truncation."""
    return calendar.timegm(moment.utctimetuple())
