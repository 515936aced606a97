"""Stripe's objects as the API replies with them (``billing.meter``, ``billing.meter_event``,
lists). Times are Unix seconds in v1."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from api.errors import invalid
from api.models import MeterEventSession
from events.models import MeterEvent
from meters.models import Meter
from usage.selectors import RejectionCount
from usage.summaries import UsageSummary

# Usage values go out as JSON numbers with exactly their decimal digits (Stripe's schema says
# number; a float would round them): written as a marked string, then unquoted.
_MARK = f"__decimal_{secrets.token_hex(8)}__"
_MARKED = re.compile(f'"{_MARK}(-?[0-9]+(?:\\.[0-9]+)?)"')


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{_MARK}{value:f}"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_text(reply: Any) -> str:
    """``reply`` as JSON, its Decimals as exact numbers."""
    text = json.dumps(reply, default=_encode)
    return _MARKED.sub(r"\1", text) if _MARK in text else text


def seconds(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def meter_object(meter: Meter) -> dict[str, Any]:
    return {
        "id": meter.meter_id,
        "object": "billing.meter",
        "created": seconds(meter.created),
        "customer_mapping": {"event_payload_key": meter.customer_mapping_key, "type": "by_id"},
        "default_aggregation": {"formula": meter.aggregation_formula},
        "display_name": meter.display_name,
        "event_name": meter.event_name,
        "event_time_window": meter.event_time_window or None,
        "livemode": False,
        "status": meter.status,
        "status_transitions": {"deactivated_at": seconds(meter.deactivated_at)},
        "updated": seconds(meter.updated),
        "value_settings": {"event_payload_key": meter.value_settings_key},
    }


def meter_event_object(event: MeterEvent) -> dict[str, Any]:
    return meter_event_fields(
        event.meter.event_name, event.identifier, event.payload, event.received_at, event.timestamp
    )


def meter_event_fields(
    event_name: str,
    identifier: str,
    payload: dict[str, Any] | None,
    created: datetime,
    timestamp: datetime,
) -> dict[str, Any]:
    """A meter event's object from its fields (an event not stored yet has no row)."""
    return {
        "object": "billing.meter_event",
        "created": seconds(created),
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": {str(k): str(v) for k, v in (payload or {}).items()},
        "timestamp": seconds(timestamp),
    }


def list_object(url: str, data: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": list(data), "has_more": has_more, "url": url}


def adjustment_object(identifier: str, event_name: str) -> dict[str, Any]:
    return {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": event_name,
        "livemode": False,
        "status": "complete",  # cancelled at once, its usage already out of the rollups
        "type": "cancel",
    }


def summary_id(meter_id: str, start: int) -> str:
    return f"mtrusg_{meter_id}_{start}"


def summary_object(meter: Meter, summary: UsageSummary) -> dict[str, Any]:
    start = int(summary.start.timestamp())
    return {
        "id": summary_id(meter.meter_id, start),
        "object": "billing.meter_event_summary",
        "aggregated_value": summary.aggregated_value,
        "end_time": int(summary.end.timestamp()),
        "livemode": False,
        "meter": meter.meter_id,
        "start_time": start,
    }


# --- v2: times as RFC 3339 text -----------------------------------------------------------------
def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_parse(text: str, param: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise invalid(
            f"Invalid {param}: '{text[:40]}' is not an RFC 3339 time such as "
            "2026-03-10T12:00:00.000Z.",
            param=param,
        ) from error
    if moment.tzinfo is None:
        raise invalid(
            f"Invalid {param}: give the time zone (for example a trailing Z for UTC).",
            param=param,
        )
    return moment.astimezone(UTC)


def v2_meter_event_object(event: MeterEvent) -> dict[str, Any]:
    return v2_meter_event_fields(
        event.meter.event_name, event.identifier, event.payload, event.received_at, event.timestamp
    )


def v2_meter_event_fields(
    event_name: str,
    identifier: str,
    payload: dict[str, Any] | None,
    created: datetime,
    timestamp: datetime,
) -> dict[str, Any]:
    """The v1 object with v2's name and RFC 3339 times."""
    return meter_event_fields(event_name, identifier, payload, created, timestamp) | {
        "object": "v2.billing.meter_event",
        "created": rfc3339(created),
        "timestamp": rfc3339(timestamp),
    }


def v2_adjustment_object(identifier: str, event_name: str, now: datetime) -> dict[str, Any]:
    return {
        "id": "mtr_event_adj_" + secrets.token_hex(12),
        "object": "v2.billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "created": rfc3339(now),
        "event_name": event_name,
        "livemode": False,
        "status": "complete",
        "type": "cancel",
    }


def v2_session_object(session: MeterEventSession, token: str) -> dict[str, Any]:
    return {
        "id": session.public_id,
        "object": "v2.billing.meter_event_session",
        "authentication_token": token,
        "created": rfc3339(session.created),
        "expires_at": rfc3339(session.expires_at),
        "livemode": False,
    }


def error_report_object(meter: Meter, report: RejectionCount) -> dict[str, Any]:
    return {
        "id": f"mtrerr_{meter.meter_id}_{report.code}",
        "object": "billing.meter_event_error_report",
        "code": report.code,
        "count": report.count,
        "last_seen_at": seconds(report.last_at),
        "message": report.message,
        "meter": meter.meter_id,
        "sample": report.sample,
    }
