"""The v1 endpoints: meters and meter events, as Stripe's SDK calls them.

Every write goes through the services the pages use (``meters.services``, the ingestion
core); every read of usage through ``usage``'s selectors. Roles: support keys read, finance
keys record usage, admin keys also manage meters.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.http import HttpRequest

from api.endpoint import ApiCall, api_endpoint, unrecognized
from api.errors import ApiError, invalid
from api.objects import list_object, meter_event_object, meter_object
from api.params import Spec
from api.selectors import meter_by_public_id, meter_page
from events.ingestion import EventInput, Outcome, event_batch_create, meter_events_ingest
from events.models import EventBatch, MeterEvent
from meters.services import meter_create, meter_deactivate, meter_reactivate, meter_update
from usage_portal.roles import Role

S, F, A = Role.SUPPORT, Role.FINANCE, Role.ADMIN

_EXPAND = {"expand": "list"}  # accepted everywhere, as Stripe does; nothing here expands
METER_CREATE = Spec(
    fields={
        "display_name": "str",
        "event_name": "str",
        "default_aggregation": Spec({"formula": "str"}, required=frozenset({"formula"})),
        "customer_mapping": Spec(
            {"event_payload_key": "str", "type": "str"},
            required=frozenset({"event_payload_key", "type"}),
            max_lengths={"event_payload_key": 100},
        ),
        "value_settings": Spec(
            {"event_payload_key": "str"},
            required=frozenset({"event_payload_key"}),
            max_lengths={"event_payload_key": 100},
        ),
        "event_time_window": "str",
        **_EXPAND,
    },
    required=frozenset({"display_name", "event_name", "default_aggregation"}),
    max_lengths={"display_name": 250, "event_name": 100},
)
METER_UPDATE = Spec({"display_name": "str", **_EXPAND}, max_lengths={"display_name": 250})
METER_LIST = Spec(
    {"limit": "int", "starting_after": "str", "ending_before": "str", "status": "str", **_EXPAND}
)
NO_PARAMS = Spec(_EXPAND)
METER_EVENT_CREATE = Spec(
    {"event_name": "str", "payload": "strmap", "identifier": "str", "timestamp": "int", **_EXPAND},
    required=frozenset({"event_name", "payload"}),
)


# --- Meters -------------------------------------------------------------------------------------
@api_endpoint(GET=S, POST=A)
def meters(request: HttpRequest, call: ApiCall) -> dict[str, Any]:
    if request.method == "POST":
        return _meter_create(call)
    params = METER_LIST.check(call.params)
    limit = params.get("limit", 10)
    if not 1 <= limit <= 100:
        raise invalid("Invalid limit: must be between 1 and 100.", param="limit")
    status = params.get("status", "")
    if status not in ("", "active", "inactive"):
        raise invalid("Invalid status: must be one of active or inactive.", param="status")
    page = meter_page(
        limit=limit,
        starting_after=params.get("starting_after", ""),
        ending_before=params.get("ending_before", ""),
        status=status,
    )
    return list_object(
        "/v1/billing/meters", [meter_object(meter) for meter in page.meters], page.has_more
    )


def _meter_create(call: ApiCall) -> dict[str, Any]:
    params = METER_CREATE.check(call.params)
    mapping = params.get("customer_mapping", {})
    if mapping and mapping["type"] != "by_id":
        raise invalid(
            "Invalid customer_mapping[type]: must be by_id.", param="customer_mapping[type]"
        )
    window = params.get("event_time_window", "")
    if window not in ("", "day", "hour"):
        raise invalid(
            "Invalid event_time_window: must be one of day or hour.", param="event_time_window"
        )
    meter = meter_create(
        actor=call.key.user,
        display_name=params["display_name"],
        event_name=params["event_name"],
        aggregation_formula=params["default_aggregation"]["formula"],
        customer_mapping_key=mapping.get("event_payload_key", "stripe_customer_id"),
        value_settings_key=params.get("value_settings", {}).get("event_payload_key", "value"),
        event_time_window=window,
    )
    return meter_object(meter)


@api_endpoint(GET=S, POST=A)
def meter(request: HttpRequest, call: ApiCall, meter_id: str) -> dict[str, Any]:
    found = meter_by_public_id(meter_id)
    if request.method == "GET":
        NO_PARAMS.check(call.params)
        return meter_object(found)
    params = METER_UPDATE.check(call.params)
    if "display_name" in params:
        found = meter_update(meter=found, actor=call.key.user, display_name=params["display_name"])
    return meter_object(found)


@api_endpoint(POST=A)
def meter_deactivate_view(request: HttpRequest, call: ApiCall, meter_id: str) -> dict[str, Any]:
    NO_PARAMS.check(call.params)
    found = meter_by_public_id(meter_id)
    return meter_object(meter_deactivate(meter=found, actor=call.key.user))


@api_endpoint(POST=A)
def meter_reactivate_view(request: HttpRequest, call: ApiCall, meter_id: str) -> dict[str, Any]:
    NO_PARAMS.check(call.params)
    found = meter_by_public_id(meter_id)
    return meter_object(meter_reactivate(meter=found, actor=call.key.user))


# --- Meter events -------------------------------------------------------------------------------
@api_endpoint(POST=F)
def meter_events(request: HttpRequest, call: ApiCall) -> dict[str, Any]:
    """Record one event through the core. Its validation errors come back at once, with
    the core's code (Stripe reports some of them later). Without an identifier one is made:
    from the Idempotency-Key when there is one, so a retry of a request whose reply was lost
    records nothing twice."""
    params = METER_EVENT_CREATE.check(call.params)
    identifier = params.get("identifier")
    derived = not identifier and bool(call.idempotency_key)
    if derived:
        seed = f"{call.key.pk}:{call.idempotency_key}".encode()
        identifier = "evt_" + hashlib.sha256(seed).hexdigest()[:32]
    timestamp = None
    if "timestamp" in params:
        try:
            timestamp = datetime.fromtimestamp(params["timestamp"], tz=UTC)
        except (OverflowError, OSError, ValueError) as error:
            raise invalid(
                "Invalid timestamp: it must be Unix seconds within the past 35 days or "
                "up to 5 minutes ahead.",
                param="timestamp",
                code="timestamp_too_far_in_past"
                if params["timestamp"] < 0
                else "timestamp_in_future",
            ) from error
    with transaction.atomic():
        batch = event_batch_create(source=EventBatch.Source.API, user=call.key.user)
        report = meter_events_ingest(
            events=[
                EventInput(
                    event_name=params["event_name"],
                    payload=params["payload"],
                    identifier=identifier,
                    timestamp=timestamp,
                )
            ],
            batch=batch,
        )
    result = report.results[0]
    if result.outcome == Outcome.REJECTED:
        raise ApiError(400, result.message, code=result.code, param=result.param)
    if result.outcome == Outcome.DUPLICATE and not derived:
        raise ApiError(
            400,
            f"An event already exists with identifier {result.identifier}.",
            code="duplicate_meter_event",
            param="identifier",
        )
    event = MeterEvent.objects.select_related("meter").get(identifier=result.identifier)
    return meter_event_object(event)


# --- Anything else under /v1 and /v2 ------------------------------------------------------------
@api_endpoint(GET=S, POST=S, DELETE=S, PUT=S, PATCH=S)
def not_found(request: HttpRequest, call: ApiCall, rest: str = "") -> dict[str, Any]:
    raise unrecognized(request)
