"""Stripe's objects as the API replies with them (``billing.meter``, ``billing.meter_event``,
lists). Times are Unix seconds in v1."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from events.models import MeterEvent
from meters.models import Meter


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
    return {
        "object": "billing.meter_event",
        "created": seconds(event.received_at),
        "event_name": event.meter.event_name,
        "identifier": event.identifier,
        "livemode": False,
        "payload": {str(k): str(v) for k, v in (event.payload or {}).items()},
        "timestamp": seconds(event.timestamp),
    }


def list_object(url: str, data: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": list(data), "has_more": has_more, "url": url}
