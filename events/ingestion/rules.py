"""Validation: the checks every event passes, whichever path it takes.

``validate`` is the one validation function: the per-event path calls it for every event,
the columnar path for every row that is not plain. The ``plain_*`` predicates are the
columnar path's shortcut for the common row; each says when ``validate`` would accept its
field as it is, so the shortcut may skip work but never decides differently.

Validation. The first failing check decides the code, in this order: identifier length
(``identifier_too_long``, more than 100 characters), ``no_meter``, ``archived_meter``,
``meter_event_no_customer_defined``, ``meter_event_customer_not_found``,
``meter_event_value_not_found``, ``meter_event_invalid_value``,
``meter_event_value_too_many_digits``, ``timestamp_too_far_in_past``,
``timestamp_in_future``. Payload values are strings; surrounding whitespace is ignored and an
empty string counts as missing.

Values. A value is a plain decimal number (``12``, ``-3.5``, ``.5``, ``1e3``); NaN, Infinity,
thousands separators and underscores are ``meter_event_invalid_value``. Significant digits
are counted on the normalised number (leading zeros and trailing fractional zeros do not
count: ``0.0012`` has 2, ``1.500`` has 2, ``1000000000000000`` has 1 but
``1000000000000001`` has 16). Values whose magnitude lies outside 1e-30..1e30 are invalid.
Count meters need no value: they count events. A count meter's event stores the value it was
given (validated like any other) or 1 when it has none; only the number of events counts.

Timestamps are timezone-aware (naive ones are a programming error: ``ValueError``), stored in
UTC truncated to the second. Missing: now. The window is
``settings.USAGE_TIMESTAMP_MAX_AGE_DAYS`` days back and
``settings.USAGE_TIMESTAMP_MAX_FUTURE_SECONDS`` ahead of ``now``.

Identifiers. Missing: ``evt_`` + 32 hex digits of a uuid4 (see ``dedup`` for what an
identifier that is given means).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.utils import timezone

from events.ingestion.dedup import content_differences
from events.ingestion.types import Code, EventInput
from meters.models import Meter

MAX_IDENTIFIER_LENGTH = 100  # characters
MAX_VALUE_DIGITS = 15  # significant digits of a value
MAX_VALUE_EXPONENT = 30  # a nonzero value's magnitude lies within 1e-30..1e30
_VALUE_PATTERN = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# A plain value: digits, maybe a fraction. With at most MAX_VALUE_DIGITS characters it has
# at most that many digits and lies well inside the magnitude bounds: ``value_parse``
# accepts it as written.
_PLAIN_VALUE = re.compile(r"\d+(?:\.\d+)?")
_PLAIN_VALUES = re.compile(r"(?:\d+(?:\.\d+)?\n)+")  # the same, for values joined by "\n"
# What JSON escapes: a payload without it holds no NUL and is its own JSON text.
_JSON_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')
JSON = json.JSONEncoder(separators=(",", ":"), default=str)  # reused: C encoder, no setup


class Rejected(Exception):
    def __init__(self, code: Code, message: str, param: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def new_identifier() -> str:
    return "evt_" + uuid.uuid4().hex


def clean(value: Any) -> str:
    return "" if value is None else str(value).strip()


# --- The accepted time window -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AcceptedWindow:
    """The timestamps an event may have, in whole Unix seconds, both ends included."""

    oldest: int  # the first second not before now - USAGE_TIMESTAMP_MAX_AGE_DAYS
    newest: int  # the last second not after now + USAGE_TIMESTAMP_MAX_FUTURE_SECONDS


def accepted_window(now: datetime) -> AcceptedWindow:
    oldest = now - timedelta(days=settings.USAGE_TIMESTAMP_MAX_AGE_DAYS)
    newest = now + timedelta(seconds=settings.USAGE_TIMESTAMP_MAX_FUTURE_SECONDS)
    # Timestamps are whole seconds: a fractional bound admits the whole seconds inside it.
    first = int(oldest.timestamp()) + (1 if oldest.microsecond else 0)
    return AcceptedWindow(oldest=first, newest=int(newest.timestamp()))


def _duration_words(seconds: int) -> str:
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


# --- Values -----------------------------------------------------------------------------------
def value_parse(raw: str) -> Decimal:
    """The value of a payload string, or ``Rejected`` with Stripe's code."""
    text = raw.strip()
    if text.isascii() and text.isdigit():  # the common case: a plain whole number
        significant = text.lstrip("0")
        if len(significant) <= MAX_VALUE_EXPONENT and len(significant.rstrip("0")) <= (
            MAX_VALUE_DIGITS
        ):
            return Decimal(text)
    head, dot, tail = text.partition(".")
    if dot and text.isascii() and head.isdigit() and tail.isdigit():  # plain "123.45"
        whole = head.lstrip("0")
        if (
            len(whole) <= MAX_VALUE_EXPONENT
            and len(tail) <= MAX_VALUE_EXPONENT
            and len((whole + tail).lstrip("0").rstrip("0")) <= MAX_VALUE_DIGITS
        ):
            return Decimal(text)
    return _value_parse_general(raw, text)


def _value_parse_general(raw: str, text: str) -> Decimal:
    """``value_parse`` of anything but a plain number: signs, exponents, and refusals."""
    if not _VALUE_PATTERN.match(text):
        raise Rejected(
            Code.INVALID_VALUE,
            f"The value in the event payload must be a number. Received {raw!r}."
            + value_advice(text),
        )
    try:
        value = Decimal(text)
    except InvalidOperation as error:  # pragma: no cover - the pattern admits only numbers
        raise Rejected(Code.INVALID_VALUE, f"Received {raw!r}.") from error
    normalized = value.normalize()
    if value != 0 and abs(normalized.adjusted()) > MAX_VALUE_EXPONENT:
        raise Rejected(
            Code.INVALID_VALUE,
            f"The value in the event payload is out of range. Received {text}.",
        )
    if len(normalized.as_tuple().digits) > MAX_VALUE_DIGITS:
        raise Rejected(
            Code.VALUE_TOO_MANY_DIGITS,
            f"The value in the event payload can have at most {MAX_VALUE_DIGITS} digits. "
            f"Received {text}.",
        )
    # Keep the written scale ("2.50"), but spell large exponents out ("1E+3" -> 1000).
    if value.as_tuple().exponent > 0:  # type: ignore[operator]
        value = value.quantize(Decimal(1))
    return value


_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:([,  \u202f'])\d{3})(?:\1\d{3})*(?:\.\d+)?")
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")
_EUROPEAN = re.compile(r"[+-]?\d{1,3}(?:\.\d{3})+,\d+")
_CURRENCY = re.compile(r"[$€£¥]\s*|\s*[$€£¥]$|\s*(?:USD|EUR|GBP)$")


def value_advice(text: str) -> str:
    """What to do about a value that is not a plain number but was meant as one ("" when
    no likely meaning is found): a spreadsheet's thousands separators, decimal comma or
    currency sign."""
    bare = _CURRENCY.sub("", text)
    if bare != text and _VALUE_PATTERN.match(bare):
        return f" Remove the currency sign: write {bare}."
    if _THOUSANDS.fullmatch(bare):
        plain = re.sub(r"[,  \u202f']", "", bare)
        return f" Remove the thousands separator: write {plain}."
    if _EUROPEAN.fullmatch(bare):
        plain = bare.replace(".", "").replace(",", ".")
        return f" Remove the thousands separator and use a dot for decimals: write {plain}."
    if _DECIMAL_COMMA.fullmatch(bare):
        return f" Use a dot for decimals: write {bare.replace(',', '.')}."
    return ""


# --- One event ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Context:
    """What validation checks events against, read once per batch (see ``lookups``)."""

    now: datetime
    window: AcceptedWindow
    meters: dict[str, Meter]  # by event name
    customers: dict[str, int]  # customer pk by external id


@dataclass(slots=True)
class Candidate:
    """An event that passed validation and waits for deduplication and storage."""

    index: int
    identifier: str
    meter: Meter
    customer_id: int
    timestamp: datetime
    timestamp_given: bool
    value: Decimal
    payload: dict[str, Any]
    line: int | None
    event_id: int | None = None

    @property
    def payload_json(self) -> str:
        # Encoded only for events that get stored: a re-sent file's duplicates never need it.
        return JSON.encode(self.payload)

    def differences(
        self, meter_id: int, customer_id: int, timestamp: datetime, value: Any
    ) -> list[str]:
        return content_differences(
            (self.meter.pk, self.customer_id, self.timestamp, self.value),
            (meter_id, customer_id, timestamp, value),
            timestamps=self.timestamp_given,
        )


def validate(index: int, event: EventInput, ctx: Context) -> Candidate:
    """The event as a ``Candidate``, or ``Rejected`` by the first check it fails."""
    identifier = _identifier_checked(event.identifier)
    meter = _meter_checked(event.event_name, ctx)
    payload = event.payload
    customer_id = _customer_checked(meter, payload, ctx)
    value = _value_checked(meter, payload)
    timestamp = _timestamp_checked(event.timestamp, ctx)
    if _payload_has_nul(payload):
        raise Rejected(Code.INVALID_PAYLOAD, "The payload contains a NUL character.", "payload")
    return Candidate(
        index=index,
        identifier=identifier or new_identifier(),
        meter=meter,
        customer_id=customer_id,
        timestamp=timestamp,
        timestamp_given=event.timestamp is not None,
        value=value,
        payload=dict(payload),
        line=event.line,
    )


def _identifier_checked(given: str | None) -> str | None:
    """The identifier as given, or None when it is missing (blank counts as missing)."""
    if not given or not given.strip():
        return None
    if len(given) > MAX_IDENTIFIER_LENGTH:
        raise Rejected(
            Code.IDENTIFIER_TOO_LONG,
            f"The identifier can have at most {MAX_IDENTIFIER_LENGTH} characters. "
            f"Received {len(given)} characters.",
            "identifier",
        )
    if "\x00" in given:
        raise Rejected(
            Code.INVALID_IDENTIFIER, "The identifier contains a NUL character.", "identifier"
        )
    return given


def _meter_checked(event_name: str, ctx: Context) -> Meter:
    meter = ctx.meters.get(event_name)
    if meter is None:
        event_name = clean(event_name)
        meter = ctx.meters.get(event_name)
    if meter is None:
        message = (
            f"No meter was found matching event_name {event_name}."
            if event_name
            else "The event has no event_name."
        )
        raise Rejected(Code.NO_METER, message, "event_name")
    if not meter.is_active:
        raise Rejected(
            Code.ARCHIVED_METER,
            f"The meter {meter.display_name} ({meter.meter_id}) for event_name {event_name} "
            "is inactive and accepts no events.",
            "event_name",
        )
    return meter


def _payload_text(payload: Mapping[str, Any], key: str) -> str:
    text = payload.get(key)
    return text.strip() if isinstance(text, str) else clean(text)


def _customer_checked(meter: Meter, payload: Mapping[str, Any], ctx: Context) -> int:
    customer_key = meter.customer_mapping_key
    customer_ref = _payload_text(payload, customer_key)
    if not customer_ref:
        raise Rejected(
            Code.NO_CUSTOMER_DEFINED,
            f"Customer mapping key {customer_key} not found in payload.",
            f"payload[{customer_key}]",
        )
    customer_id = ctx.customers.get(customer_ref)
    if customer_id is None:
        raise Rejected(
            Code.CUSTOMER_NOT_FOUND,
            f"No customer was found with ID {customer_ref}.",
            f"payload[{customer_key}]",
        )
    return customer_id


def _value_checked(meter: Meter, payload: Mapping[str, Any]) -> Decimal:
    value_key = meter.value_settings_key
    value_text = _payload_text(payload, value_key)
    if not value_text:
        if meter.aggregation_formula != Meter.Formula.COUNT:
            raise Rejected(
                Code.VALUE_NOT_FOUND,
                f"Value key {value_key} not found in payload.",
                f"payload[{value_key}]",
            )
        return Decimal(1)
    try:
        return value_parse(value_text)
    except Rejected as rejected:
        rejected.param = f"payload[{value_key}]"
        raise


def _timestamp_checked(given: datetime | None, ctx: Context) -> datetime:
    """The timestamp in UTC, whole seconds (now when none is given), inside the window."""
    timestamp = given
    if timestamp is None:
        timestamp = ctx.now.replace(microsecond=0)
    elif timestamp.tzinfo is not UTC or timestamp.microsecond:
        if timezone.is_naive(timestamp):
            raise ValueError("EventInput.timestamp must be timezone-aware.")
        timestamp = timestamp.astimezone(UTC).replace(microsecond=0)
    seconds = int(timestamp.timestamp())
    if seconds < ctx.window.oldest:
        raise Rejected(
            Code.TIMESTAMP_TOO_FAR_IN_PAST,
            f"The timestamp {timestamp:%Y-%m-%d %H:%M:%S} UTC is more than "
            f"{settings.USAGE_TIMESTAMP_MAX_AGE_DAYS} days in the past.",
            "timestamp",
        )
    if seconds > ctx.window.newest:
        raise Rejected(
            Code.TIMESTAMP_IN_FUTURE,
            f"The timestamp {timestamp:%Y-%m-%d %H:%M:%S} UTC is more than "
            f"{_duration_words(settings.USAGE_TIMESTAMP_MAX_FUTURE_SECONDS)} in the future.",
            "timestamp",
        )
    return timestamp


def _payload_has_nul(payload: Mapping[str, Any]) -> bool:
    """Whether the payload's JSON would contain ``\\u0000`` (PostgreSQL's jsonb refuses it).

    For string keys and values that is exactly: some string holds a NUL, or the text
    ``\\u0000`` (whose backslash JSON doubles, leaving ``\\u0000`` in the output). Joined
    with U+0001, which JSON escapes, no match can span two strings."""
    try:
        text = "\x01".join((*payload.keys(), *payload.values()))
    except TypeError:  # not all strings (an API caller's numbers): ask the encoder
        return "\\u0000" in JSON.encode(payload)
    return "\x00" in text or "\\u0000" in text


# --- The plain row: what the columnar path may accept without ``validate`` ---------------------
# Each predicate implies that ``validate`` accepts the field unchanged. What they leave to
# the caller: the meter is active and known by exactly that name, the customer reference is
# known exactly as given, and a count meter's missing value is "1" (``Decimal(1)`` above).
def plain_identifier(identifier: str) -> bool:
    """Given, kept as it is: not blank, at most MAX_IDENTIFIER_LENGTH characters, no NUL."""
    return (
        0 < len(identifier) <= MAX_IDENTIFIER_LENGTH
        and "\x00" not in identifier
        and not identifier.isspace()
    )


def plain_identifiers(identifiers: list[str]) -> bool:
    """``plain_identifier`` of every identifier (one pass per column, not per identifier)."""
    return (
        bool(identifiers)
        and min(map(len, identifiers)) > 0
        and max(map(len, identifiers)) <= MAX_IDENTIFIER_LENGTH
        and "\x00" not in "".join(identifiers)
        and not any(map(str.isspace, identifiers))
    )


def plain_value(text: str) -> bool:
    """A value ``value_parse`` accepts as written (its Decimal has the same digits)."""
    return len(text) <= MAX_VALUE_DIGITS and _PLAIN_VALUE.fullmatch(text) is not None


def plain_values(texts: list[str]) -> bool:
    """``plain_value`` of every text, in one match over the column."""
    return (
        bool(texts)
        and max(map(len, texts)) <= MAX_VALUE_DIGITS
        and _PLAIN_VALUES.fullmatch("\n".join(texts) + "\n") is not None
    )


def plain_texts(texts: list[str]) -> bool:
    """Payload keys or values that JSON writes as they are: then they hold no NUL either
    (no ``invalid_payload``), and a payload of them is its JSON between quotes."""
    return _JSON_NEEDS_ESCAPE.search("".join(texts)) is None


def in_window(seconds: int, window: AcceptedWindow) -> bool:
    return window.oldest <= seconds <= window.newest
