"""Reading usage files of JSON events, as an S3 connector finds them: JSON lines (one event
object a line, ``.jsonl`` or ``.ndjson``) or one JSON array of events (``.json``), either
optionally gzip-compressed (recognised by content, as for CSV).

Each event has Stripe's shape: ``event_name``, ``timestamp`` (Unix seconds or RFC 3339),
``identifier`` (optional) and ``payload``, an object of strings. The reader turns events into
the same ``Record``s the CSV reader yields, against a header of the columns a CSV of the same
events would have (``timestamp``, ``event_name``, ``identifier``, ``payload_<key>``), so the
rest of the pipeline, the error file included, is the CSV one. Other top-level fields are
ignored, as other CSV columns are.

Numbers keep their exact text (never a float): ``"value": 0.1`` is the value ``0.1``. An
event that is not an object, a line that is not JSON, or a payload that is not an object is
a row error of its own line, and the others import.

Lines are those of the decompressed file, counting from 1 (there is no header line); in a
JSON array an event's "line" is its position in the array, counting from 1.

Why two readers for JSON lines: pyarrow's JSON reader parses a block of lines in C++ (about a
million events a second here; Python's ``json`` a tenth of that). It cannot say which line
is wrong, it skips blank lines and reads a line of ``null`` as an event, so a block it
refuses, with a line that does not start with ``{``, whose text is not UTF-8 or whose values
are not plain strings and integers (a float's text is lost once parsed as a double) is read
again line by line in Python, exactly. A property test holds the two to the same answer.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from heapq import merge
from typing import IO, Any

import ijson
import pyarrow as pa
import pyarrow.json as pajson

from uploads.reading import (
    PAYLOAD_PREFIX,
    FileProblem,
    Inspection,
    Record,
    RowError,
    columns_over_limit,
    format_bytes,
)

JSONL = "jsonl"
JSON = "json"
TOP_LEVEL_COLUMNS = ("timestamp", "event_name", "identifier")
_BLOCK_BYTES = 4 * 1024 * 1024  # a few tens of thousands of events: memory stays low
_ARRAY_BLOCK_EVENTS = 20_000
_FAST_TYPES = (pa.string(), pa.large_string(), pa.int64(), pa.null())


@dataclass(slots=True)
class _Block:
    """Consecutive events: their lines, their values by column ("" where absent), and the
    records of the lines that are no event (errors)."""

    lines: list[int]
    columns: dict[str, list[str]]
    errors: list[Record] = field(default_factory=list)


# --- Blocks of events ------------------------------------------------------------------------
def _blocks(
    binary: IO[bytes], *, file_format: str, max_bytes: int, max_line_bytes: int
) -> Iterator[_Block]:
    if file_format == JSON:
        yield from _array_blocks(_Limited(binary, max_bytes))
    else:
        yield from _line_blocks(_Limited(binary, max_bytes), max_line_bytes=max_line_bytes)


class _Limited(io.RawIOBase):
    """The decompressed content, refused once it is larger than ``max_bytes``."""

    def __init__(self, binary: IO[bytes], max_bytes: int) -> None:
        super().__init__()
        self._binary = binary
        self._max_bytes = max_bytes
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        try:
            block = self._binary.read(size)
        except (OSError, EOFError) as error:
            raise FileProblem(f"The gzip-compressed file is damaged: {error}.") from None
        self.read_bytes += len(block)
        if self.read_bytes > self._max_bytes:
            raise FileProblem(
                f"The file holds more than {format_bytes(self._max_bytes)} of events, the "
                f"most one file may hold. Split it into smaller files."
            )
        return block

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        block = self.read(len(buffer))
        buffer[: len(block)] = block
        return len(block)


def _line_blocks(content: _Limited, *, max_line_bytes: int) -> Iterator[_Block]:
    """JSON lines in blocks of whole lines, each parsed at once (see the module doc). A line
    longer than ``max_line_bytes`` is skipped as it is read, and is a row error."""
    carry = b""
    next_line = 1  # the line the carry (or the next block) starts on
    skipping = False  # inside an over-long line, dropped up to its end
    first = True
    while True:
        block = content.read(_BLOCK_BYTES)
        if first:  # a byte-order mark some tools write first is no part of the JSON
            block, first = block.removeprefix(b"\xef\xbb\xbf"), False
        if skipping:
            end = block.find(b"\n")
            if end < 0 and block:
                continue
            skipping = False
            next_line += 1
            block = block[end + 1 :] if end >= 0 else b""
        data = carry + block
        cut = data.rfind(b"\n") + 1 if block else len(data)
        whole, carry = data[:cut], data[cut:]
        if whole:
            yield _lines_parsed(whole, next_line, max_line_bytes)
            next_line += whole.count(b"\n") + (0 if whole.endswith(b"\n") else 1)
        if len(carry) > max_line_bytes:
            yield _Block([], {}, [_line_too_long(next_line, max_line_bytes)])
            carry, skipping = b"", True
        if not block:
            return


def _line_too_long(line: int, max_line_bytes: int) -> Record:
    return Record(
        line,
        [],
        RowError(
            "line_too_long",
            f"This line is longer than {format_bytes(max_line_bytes)}, the longest line "
            f"accepted; it was skipped.",
        ),
    )


def _lines_parsed(data: bytes, first_line: int, max_line_bytes: int) -> _Block:
    fast = _lines_parsed_by_arrow(data, first_line, max_line_bytes)
    if fast is not None:
        return fast
    return _lines_parsed_one_by_one(data, first_line, max_line_bytes)


def _lines_parsed_by_arrow(data: bytes, first_line: int, max_line_bytes: int) -> _Block | None:
    """The block parsed by pyarrow, or None when it must be read line by line. Its blocks
    are the longest line accepted: a longer line fails it (and is refused line by line)."""
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if not _one_object_a_line(data, lines) or max(map(len, data.split(b"\n"))) > max_line_bytes:
        return None
    try:
        data.decode("utf-8")
        table = _arrow_table(data, max_line_bytes)
    except (pa.ArrowException, UnicodeDecodeError):
        return None
    if table.num_rows != lines:  # blank lines were skipped: the line numbers would be wrong
        return None
    columns: dict[str, list[str]] = {}
    for name in TOP_LEVEL_COLUMNS:
        if name in table.column_names and (values := _strings(table.column(name))) is not None:
            columns[name] = values
        elif name in table.column_names:
            return None
    if "payload" in table.column_names:
        payload = table.column("payload")
        if pa.types.is_null(payload.type):
            pass
        elif not pa.types.is_struct(payload.type):
            return None
        else:
            for index in range(payload.type.num_fields):
                child = pa.chunked_array(
                    [chunk.field(index) for chunk in payload.chunks], payload.type.field(index).type
                )
                values = _strings(child)
                if values is None:
                    return None
                columns[PAYLOAD_PREFIX + payload.type.field(index).name] = values
            # A payload that is null on some line reads as a struct of nulls: same as absent.
    return _Block(list(range(first_line, first_line + lines)), columns)


def _one_object_a_line(data: bytes, lines: int) -> bool:
    """Every line starts with ``{`` and ends with ``}``: then pyarrow's rows are the lines,
    one each, when it counts as many (JSON has no raw newline inside a string, and an object
    split over lines would put ``}`` and ``{`` side by side, which is no JSON). Anything else
    (pyarrow took a line of "null" for an event, and crashed on one alone: pyarrow 26; blank
    or indented lines; two objects on a line) is read line by line."""
    ends = data.count(b"}\n") + data.count(b"}\r\n")
    if not data.endswith(b"\n"):
        ends += data.endswith(b"}")
    return data[:1] == b"{" and data.count(b"\n{") == lines - 1 and ends == lines


def _arrow_table(data: bytes, max_line_bytes: int) -> pa.Table:
    """The block as a table, read as one chunk: a field whose type changes between pyarrow's
    chunks (a payload that is a number, then objects a megabyte later) crashed the process
    (pyarrow 26), where within one chunk it is an error (and the block is read line by
    line). pyarrow reads RFC 3339 strings as timestamps, whose text is not the file's: such
    columns (a timestamp, a date-like payload value) are read again as text."""
    options = pajson.ReadOptions(block_size=len(data) + 1)
    table = pajson.read_json(io.BytesIO(data), read_options=options)
    fields, retyped = [], False
    for column in table.schema:
        kind = column.type
        if pa.types.is_timestamp(kind):
            kind, retyped = pa.string(), True
        elif pa.types.is_struct(kind) and any(pa.types.is_timestamp(f.type) for f in kind):
            kind = pa.struct(
                [f.with_type(pa.string()) if pa.types.is_timestamp(f.type) else f for f in kind]
            )
            retyped = True
        fields.append(column.with_type(kind))
    if not retyped:
        return table
    parse = pajson.ParseOptions(explicit_schema=pa.schema(fields))
    return pajson.read_json(io.BytesIO(data), read_options=options, parse_options=parse)


def _strings(column: pa.ChunkedArray) -> list[str] | None:
    """The column's values as text ("" for null), or None when its type's text is not
    exactly the JSON's (floats, booleans, objects)."""
    if column.type not in _FAST_TYPES:
        return None
    if pa.types.is_null(column.type):
        return [""] * len(column)
    texts = column.cast(pa.string()).fill_null("")
    return texts.to_pylist()


def _lines_parsed_one_by_one(data: bytes, first_line: int, max_line_bytes: int) -> _Block:
    events: list[tuple[int, dict[str, str]]] = []
    errors: list[Record] = []
    for offset, raw in enumerate(data.split(b"\n")):
        line = first_line + offset
        if len(raw) > max_line_bytes:
            errors.append(_line_too_long(line, max_line_bytes))
            continue
        text = raw.strip()
        if not text:
            continue
        try:
            value = json.loads(text, parse_float=Decimal)
        except UnicodeDecodeError:
            errors.append(Record(line, [], RowError("malformed_json", _NOT_UTF8)))
            continue
        except ValueError as error:
            message = f"This line is not valid JSON: {getattr(error, 'msg', error)}"
            if isinstance(error, json.JSONDecodeError):
                message += f" (at character {error.pos + 1})"
            message += ". Write each event as one JSON object on its own line. The line: "
            message += text[:300].decode("utf-8", "replace") + ("…" if len(text) > 300 else "")
            errors.append(Record(line, [], RowError("malformed_json", message)))
            continue
        fields = _event_fields(value)
        if isinstance(fields, RowError):
            errors.append(Record(line, [], fields))
        else:
            events.append((line, fields))
    return _block_of(events, errors)


_NOT_UTF8 = "This line is not UTF-8 text. Save the file as UTF-8 and upload it again."


def _block_of(events: list[tuple[int, dict[str, str]]], errors: list[Record]) -> _Block:
    names: dict[str, None] = {}
    for _, fields in events:
        names.update(dict.fromkeys(fields))
    columns = {name: [fields.get(name, "") for _, fields in events] for name in names}
    return _Block([line for line, _ in events], columns, errors)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    return "a number"


def _text(value: Any) -> str:
    """A JSON value as the text a CSV cell would hold: strings as they are, numbers exactly
    (they were parsed as text or ``Decimal``), null as absent, others as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def _event_fields(value: Any) -> dict[str, str] | RowError:
    """An event's values by column, or the error that it is no event."""
    if not isinstance(value, dict):
        return RowError(
            "not_an_object",
            f"This event is {_kind(value)}, not a JSON object. Each event is an object such "
            f'as {{"event_name": "api_calls", "timestamp": 1764547200, "payload": '
            f'{{"stripe_customer_id": "cus_123", "value": "1"}}}}.',
        )
    fields = {name: _text(value[name]) for name in TOP_LEVEL_COLUMNS if name in value}
    payload = value.get("payload")
    if payload is None:
        return fields
    if not isinstance(payload, dict):
        return RowError(
            "payload_not_object",
            f"The event's payload is {_kind(payload)}; it must be an object of strings, such "
            f'as {{"stripe_customer_id": "cus_123", "value": "1"}}.',
            "payload",
        )
    for key, item in payload.items():
        fields[PAYLOAD_PREFIX + str(key)] = _text(item)
    return fields


def _array_blocks(content: _Limited) -> Iterator[_Block]:
    """A JSON array's events, streamed (``ijson``), in blocks."""
    buffered = io.BufferedReader(content, buffer_size=1 << 20)
    head = buffered.peek(64).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if not head:
        raise FileProblem("The file is empty: it holds no events.")
    if not head.startswith(b"["):
        kind = "an object" if head.startswith(b"{") else "not a JSON array"
        raise FileProblem(
            f"The file is {kind}: a .json file must hold one array of events, "
            f'[{{"event_name": ..., "timestamp": ..., "payload": {{...}}}}, ...]. For one event '
            f"per line, name the file .jsonl."
        )
    position = 0
    events: list[tuple[int, dict[str, str]]] = []
    errors: list[Record] = []
    try:
        for value in ijson.items(buffered, "item", use_float=False):
            position += 1
            fields = _event_fields(value)
            if isinstance(fields, RowError):
                errors.append(Record(position, [], fields))
            else:
                events.append((position, fields))
            if len(events) + len(errors) >= _ARRAY_BLOCK_EVENTS:
                yield _block_of(events, errors)
                events, errors = [], []
    except ijson.JSONError as error:
        reason = str(error).splitlines()[0] if str(error) else "it ends too soon"
        raise FileProblem(
            f"The file is not valid JSON after its event {position:,}: {reason}. Nothing is "
            f"imported from it: fix the file (or write it as JSON lines) and drop it again."
        ) from None
    except UnicodeDecodeError:
        raise FileProblem(
            f"The file is not UTF-8 text after its event {position:,}. Save it as UTF-8."
        ) from None
    yield _block_of(events, errors)


# --- The pipeline's two passes ---------------------------------------------------------------
def json_inspect(
    binary: IO[bytes],
    *,
    file_format: str,
    max_bytes: int,
    max_line_bytes: int,
    max_columns: int,
    pulse: Callable[[], None] = lambda: None,
) -> Inspection:
    """The first pass: every event read (so bad content fails before anything is imported),
    the columns its events use, their count and event names."""
    header: dict[str, None] = dict.fromkeys(("timestamp", "event_name"))
    names: set[str] = set()
    counted = 0
    for block in _blocks(
        binary, file_format=file_format, max_bytes=max_bytes, max_line_bytes=max_line_bytes
    ):
        pulse()
        counted += len(block.lines) + len(block.errors)
        header.update(dict.fromkeys(block.columns))
        if problem := columns_over_limit(list(header), max_columns):
            raise FileProblem(problem)
        if len(names) < 10_000:
            names.update(block.columns.get("event_name", ()))
    if not counted:
        raise FileProblem("The file holds no events.")
    names.discard("")
    return Inspection(header=list(header), event_names=names, records=counted)


def json_records(
    binary: IO[bytes], *, file_format: str, header: list[str], max_bytes: int, max_line_bytes: int
) -> Iterator[Record]:
    """The second pass: each event as the values of ``header``'s columns, and the lines that
    are no event as their errors, in file order."""
    for block in _blocks(
        binary, file_format=file_format, max_bytes=max_bytes, max_line_bytes=max_line_bytes
    ):
        empty = [""] * len(block.lines)
        columns = [block.columns.get(name, empty) for name in header]
        events = (
            Record(line, list(fields))
            for line, fields in zip(block.lines, zip(*columns, strict=True), strict=True)
        )
        if block.errors:
            yield from merge(events, block.errors, key=lambda record: record.line)
        else:
            yield from events
