"""Accepting events in columns (file sources): which rows become candidates, in columns.

The common row of a file -- an active meter, a known customer, a plain decimal value, a
timestamp in range, an identifier seen once -- is checked by the ``plain_*`` predicates of
``rules`` and written with COPY. Every other row goes through ``rules.validate``, the same
function every source uses, so codes, messages and the order of checks are the same on both
paths. Usually every row of a chunk is plain: then the chunk is accepted column by column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pyarrow.compute as pc

from events.ingestion.batches import rejection_of
from events.ingestion.dedup import StoredRow, conflict_message, content_differences
from events.ingestion.rules import (
    JSON,
    Context,
    Rejected,
    clean,
    in_window,
    new_identifier,
    plain_identifier,
    plain_identifiers,
    plain_texts,
    plain_value,
    plain_values,
    validate,
)
from events.ingestion.types import Code, EventColumns, IngestCounts
from events.models import EventBatch, EventRejection
from meters.models import Meter
from usage_portal import arrow

_Row = tuple[int, int, int, str]  # meter id, customer id, timestamp (Unix seconds), value
# Per meter: itself, its customer and value columns, whether a missing value counts as 1.
_Spec = tuple[Meter, list[str], list[str], bool]


@dataclass(slots=True)
class Accepted:
    """Candidates in columns, in input order, and how to make their payloads' JSON."""

    positions: list[int] = field(default_factory=list)
    identifiers: list[str] = field(default_factory=list)
    meter_ids: list[int] = field(default_factory=list)
    customer_ids: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)  # JSON, "" until it is needed
    first_at: dict[str, int] = field(default_factory=dict)  # identifier -> its position
    payload_keys: list[str] = field(default_factory=list)  # each key's JSON and ':"'
    value_columns: list[list[str]] = field(default_factory=list)

    def add(self, index: int, identifier: str, row: _Row, payload_json: str) -> None:
        self.first_at[identifier] = len(self.positions)
        self.positions.append(index)
        self.identifiers.append(identifier)
        self.meter_ids.append(row[0])
        self.customer_ids.append(row[1])
        self.timestamps.append(row[2])
        self.values.append(row[3])
        self.payloads.append(payload_json)

    def differences(self, position: int, theirs: tuple[int, int, int, object]) -> list[str]:
        """What differs between an accepted candidate and another event with its identifier
        (meter id, customer id, Unix seconds, value)."""
        mine = (
            self.meter_ids[position],
            self.customer_ids[position],
            self.timestamps[position],
            self.values[position],
        )
        return content_differences(mine, theirs)

    def stored_split(self, stored: dict[str, StoredRow]) -> tuple[dict[int, StoredRow], list[int]]:
        """Given the stored rows of the identifiers already taken ({identifier: row}), the
        candidates they hold ({position: stored row}) and the positions of the new ones."""
        existing = {self.first_at[identifier]: row for identifier, row in stored.items()}
        return existing, [p for p in range(len(self.positions)) if p not in existing]

    def payloads_fill(self, positions: list[int]) -> None:
        """Make the payload JSON of those ``positions`` that have none yet."""
        missing = [position for position in positions if not self.payloads[position]]
        if missing:
            rows = [self.positions[position] for position in missing]
            made = _plain_payloads_json(self.payload_keys, self.value_columns, rows)
            for position, text in zip(missing, made, strict=True):
                self.payloads[position] = text


class ColumnsIntake:
    """The rows of ``columns`` sorted into candidates (``accepted``), duplicates within the
    chunk and rejections (``counts``, ``rejections``). Every duplicate is counted, and its
    row recorded (``counts.duplicate_rows``), here: by ``_settle`` or ``duplicates_all``."""

    def __init__(self, columns: EventColumns, batch: EventBatch, ctx: Context) -> None:
        self.columns, self.batch, self.ctx = columns, batch, ctx
        empty = [""] * len(columns)
        payload = columns.payload
        self.specs: dict[str, _Spec] = {
            name: (
                meter,
                payload.get(meter.customer_mapping_key, empty),
                payload.get(meter.value_settings_key, empty),
                meter.aggregation_formula == Meter.Formula.COUNT,
            )
            for name, meter in ctx.meters.items()
            if meter.is_active
        }
        self.meters_by_pk = {meter.pk: meter for meter in ctx.meters.values()}
        self.rejections: list[EventRejection] = []
        self.counts = IngestCounts(0, 0, 0, {})
        # Rows whose identifier an earlier row of the chunk holds: (row index, that row's
        # position, content). Judged once the store says whether the earlier row was stored
        # before: a rejected event claims no identifier, so then the stored one decides.
        self.repeats: list[tuple[int, int, _Row]] = []
        self.accepted = Accepted(
            payload_keys=[JSON.encode(key) + ':"' for key in payload],
            value_columns=list(payload.values()),
        )
        self.keys_plain = plain_texts(list(payload))
        # Usually no key or value of the chunk needs escaping: then a row's payload JSON is
        # made only if the row is stored, not for rows found to be duplicates.
        self.plain_chunk = self.keys_plain and all(map(plain_texts, payload.values()))

    def reject(self, index: int, code: Code, message: str, param: str, meter: Meter | None) -> None:
        event = self.columns.event_input(index)
        self.rejections.append(rejection_of(self.batch, event, code, message, param, meter))
        self.counts.rejected += 1

    def settle_stored(self, stored: dict[int, StoredRow]) -> None:
        """Count, or reject as conflicts, the candidates whose identifiers were stored, then
        the chunk's repeats of identifiers: against the stored event where there is one,
        else against the chunk's first row with the identifier."""
        accepted = self.accepted
        for position, stored_row in stored.items():
            differences = accepted.differences(position, _stored_content(stored_row))
            meter_pk = accepted.meter_ids[position]
            self._settle(accepted.positions[position], position, meter_pk, differences, True)
        for index, position, row in self.repeats:
            held = stored.get(position)
            if held is None:
                differences = accepted.differences(position, row)
            else:
                differences = content_differences(row, _stored_content(held))
            self._settle(index, position, row[0], differences, held is not None)
        self.repeats = []

    def duplicates_all(self) -> None:
        """Every candidate is a duplicate: its events were all stored before, alike."""
        self.counts.duplicates += len(self.accepted.positions)
        self.counts.duplicate_rows += self.accepted.positions

    def settle_repeats(self, *, stored: bool) -> None:
        """Judge the chunk's repeats against the first rows with their identifiers, when
        those are known to equal what is stored (``stored``) or nothing is."""
        for index, position, row in self.repeats:
            differences = self.accepted.differences(position, row)
            self._settle(index, position, row[0], differences, stored)
        self.repeats = []

    def _settle(
        self, index: int, position: int, meter_pk: int, differences: list[str], stored: bool
    ) -> None:
        """Row ``index`` repeats the identifier of candidate ``position``: a duplicate when
        nothing differs, else a conflict with the stored event or the earlier row."""
        if not differences:
            self.counts.duplicates += 1
            self.counts.duplicate_rows.append(index)
            return
        identifier = self.accepted.identifiers[position]
        self.reject(
            index,
            Code.DUPLICATE_CONFLICT,
            conflict_message(identifier, differences, stored=stored),
            "identifier",
            self.meters_by_pk[meter_pk],
        )

    def accept(self) -> None:
        if not (self.plain_chunk and self._accept_plain_chunk()):
            self._accept_rows()

    def _accept_rows(self) -> None:
        accepted = self.accepted
        for index in range(len(self.columns)):
            found = self._plain_row(index) or self._validated_row(index)
            if found is None:
                continue  # rejected
            identifier, row, payload_json = found
            if not identifier:
                identifier = new_identifier()
            earlier = accepted.first_at.get(identifier)
            if earlier is None:
                accepted.add(index, identifier, row, payload_json)
            else:
                self.repeats.append((index, earlier, row))

    def _plain_row(self, index: int) -> tuple[str, _Row, str] | None:
        """The row's identifier ("": none), content and payload JSON if it is plain."""
        spec = self.specs.get(self.columns.event_names[index])
        identifier = self.columns.identifiers[index]
        timestamp = self.columns.timestamps[index]
        if (
            spec is None
            or not in_window(timestamp, self.ctx.window)
            or (identifier and not plain_identifier(identifier))
        ):
            return None
        meter, customer_column, value_column, counts_events = spec
        customer_id = self.ctx.customers.get(customer_column[index])
        value = value_column[index] or ("1" if counts_events else "")
        if customer_id is None or not plain_value(value):
            return None
        payload_json = "" if self.plain_chunk else self._payload_json(index)
        if payload_json is None:
            return None
        return identifier, (meter.pk, customer_id, timestamp, value), payload_json

    def _payload_json(self, index: int) -> str | None:
        """The row's payload JSON, or None when a key or value needs escaping (then the row
        takes ``validate``, which also refuses what jsonb cannot hold)."""
        values = [column[index] for column in self.accepted.value_columns]
        if not (self.keys_plain and plain_texts(values)):
            return None
        keys = self.accepted.payload_keys
        parts = [key + value + '"' for key, value in zip(keys, values, strict=True) if value]
        return "{" + ",".join(parts) + "}"

    def _validated_row(self, index: int) -> tuple[str, _Row, str] | None:
        """The row checked by ``validate``; None, and the row rejected, if it fails."""
        try:
            checked = validate(index, self.columns.event_input(index), self.ctx)
        except Rejected as rejected:
            meter = self.ctx.meters.get(clean(self.columns.event_names[index]))
            self.reject(index, rejected.code, rejected.message, rejected.param, meter)
            return None
        row = (
            checked.meter.pk,
            checked.customer_id,
            int(checked.timestamp.timestamp()),
            str(checked.value),
        )
        return checked.identifier, row, checked.payload_json

    def _accept_plain_chunk(self) -> bool:
        """Accept every row at once if every row is plain and its identifier distinct (then
        ``_accept_rows`` would accept them all the same way); False, with nothing changed,
        if any row is not."""
        columns, specs = self.columns, self.specs
        names, identifiers, timestamps = (
            columns.event_names,
            columns.identifiers,
            columns.timestamps,
        )
        count = len(names)
        used = set(names)
        if not count or not used <= specs.keys():
            return False  # an unknown or inactive meter
        window = self.ctx.window
        if not (in_window(min(timestamps), window) and in_window(max(timestamps), window)):
            return False
        if len(set(identifiers)) != count or not plain_identifiers(identifiers):
            return False
        if len(used) == 1:
            _meter, refs, values, counts_events = specs[next(iter(used))]
            values = [value or "1" for value in values] if counts_events else values
        else:
            refs = [specs[name][1][index] for index, name in enumerate(names)]
            values = [
                specs[name][2][index] or ("1" if specs[name][3] else "")
                for index, name in enumerate(names)
            ]
        customer_ids = [self.ctx.customers.get(ref) for ref in refs]
        if None in customer_ids or not plain_values(values):
            return False
        accepted = self.accepted
        accepted.positions[:] = range(count)
        accepted.identifiers[:] = identifiers
        accepted.meter_ids[:] = [specs[name][0].pk for name in names]
        accepted.customer_ids[:] = customer_ids  # type: ignore[assignment]
        accepted.timestamps[:] = timestamps
        accepted.values[:] = values
        accepted.payloads[:] = [""] * count
        accepted.first_at.update(zip(identifiers, range(count), strict=True))
        return True


# The JSON's fixed parts, as compute functions' arguments (see usage_portal.arrow).
_QUOTE, _OPEN, _CLOSE = (arrow.text(part) for part in ('"', "{", "}"))


def _plain_payloads_json(
    keys: list[str], value_columns: list[list[str]], rows: list[int]
) -> list[str]:
    """The payload JSON of ``rows``, whose values need no escaping: each key (given as its
    JSON and ``:"``) with its value, empty values left out. Column by column in Arrow."""
    if not keys:
        return ["{}"] * len(rows)
    taken = arrow.int64s(rows)
    parts = []
    for key, column in zip(keys, value_columns, strict=True):
        values = arrow.strings(column).take(taken)
        # Each pair with its comma before it.
        pair = pc.binary_join_element_wise(arrow.text("," + key), values, _QUOTE, arrow.EMPTY)
        parts.append(pc.if_else(pc.equal(values, arrow.EMPTY), arrow.EMPTY, pair))
    # Without the first pair's comma.
    joined = pc.utf8_slice_codeunits(pc.binary_join_element_wise(*parts, arrow.EMPTY), 1)
    return pc.binary_join_element_wise(_OPEN, joined, _CLOSE, arrow.EMPTY).to_pylist()


def _stored_content(row: StoredRow) -> tuple[int, int, int, Decimal]:
    """A stored event's (meter id, customer id, Unix seconds, value), as rows compare."""
    meter_id, customer_id, timestamp, value = row
    return meter_id, customer_id, int(timestamp.timestamp()), value
