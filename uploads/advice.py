"""What to do about each error code of a failed row, in a finance user's words: the one
place the upload page's summary (and anything else that explains a code) reads it from."""

from __future__ import annotations

ADVICE: dict[str, str] = {
    # The file's own errors (uploads.reading, uploads.rows).
    "malformed_row": "Fix the quoting of these lines: a value with a comma or a quote must "
    "be in double quotes, and a quote inside it doubled.",
    "line_too_long": "Split these lines' long values, or remove columns the import does not need.",
    "row_column_count": "Give these lines as many values as the header has columns (a value "
    "with a comma must be in double quotes).",
    "column_missing": "Add the missing column named in the message, with each row's value, "
    "and upload these rows again.",
    "event_name_missing": "Fill in event_name with the event name of the row's meter.",
    "timestamp_missing": "Fill in timestamp (yyyy-MM-dd, an ISO 8601 time or Unix seconds).",
    "timestamp_invalid": "Write timestamp as yyyy-MM-dd, an ISO 8601 time "
    "(2024-09-23T16:22:25+05:30) or Unix seconds.",
    # The ingestion core's codes (Stripe's).
    "identifier_too_long": "Shorten identifier to at most 100 characters.",
    "invalid_identifier": "Remove the control characters from identifier.",
    "invalid_payload": "Remove the control characters from the row's payload_ values.",
    "no_meter": "Use the event name of an existing meter in event_name, or create the meter first.",
    "archived_meter": "Reactivate the meter, or move these rows to an active meter.",
    "meter_event_no_customer_defined": "Fill in the customer ID column named in the message.",
    "meter_event_customer_not_found": "Use the ID of an existing customer (IDs are "
    "case-sensitive), or add the customer first.",
    "meter_event_value_not_found": "Fill in the value column named in the message.",
    "meter_event_invalid_value": "Write the value as a plain number: digits and a dot for "
    "decimals, no thousands separators, currency signs or spaces.",
    "meter_event_value_too_many_digits": "Round the value to at most 15 significant digits.",
    "timestamp_too_far_in_past": "Usage this old cannot be recorded; check the date, or "
    "record it as an adjustment in the current period.",
    "timestamp_in_future": "Check the date and time zone: usage cannot be recorded ahead of time.",
    "duplicate_meter_event_conflict": "Give the row a new identifier if it is new usage, or "
    "leave it out if it repeats usage already recorded.",
}

DEFAULT_ADVICE = "Fix these rows as the message says, and upload them again."


def advice_for(code: str) -> str:
    return ADVICE.get(code, DEFAULT_ADVICE)
