"""The v1 endpoints: meters and meter events, as Stripe's SDK calls them.

Every write goes through the services the pages use (``meters.services``, the ingestion
core); every read of usage through ``usage``'s selectors. Roles: support keys read, finance
keys record usage, admin keys also manage meters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from api.endpoint import ApiCall, api_endpoint, unrecognized
from api.errors import ApiError, invalid
from api.objects import (
    adjustment_object,
    error_report_object,
    json_text,
    list_object,
    meter_event_fields,
    meter_event_object,
    meter_object,
    rfc3339_parse,
    summary_object,
    v2_adjustment_object,
    v2_meter_event_fields,
    v2_meter_event_object,
    v2_session_object,
)
from api.params import Spec
from api.selectors import (
    customer_by_external_id,
    event_by_identifier,
    meter_by_public_id,
    meter_page,
    summary_page,
)
from api.services import meter_event_session_create
from api.stream import KeyRevoked, inbox_identifier_settle, meter_event_keep, stream_request_store
from events.ingestion import (
    EventCancelError,
    EventInput,
    Outcome,
    event_batch_create,
    meter_event_cancel,
    meter_event_precheck,
    meter_events_ingest,
)
from events.models import EventBatch, MeterEvent
from meters.services import meter_create, meter_deactivate, meter_reactivate, meter_update
from usage.selectors import meter_rejections_by_code
from usage.summaries import Grouping, meter_event_summaries, usage_range_validate
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
def _meter_event_fast(call: ApiCall, digest: str) -> tuple[int, str] | None:
    """A v1 create the core's precheck passes: kept in the inbox and answered at once."""
    try:
        params, timestamp = _meter_event_params(call)
    except ApiError:
        return None  # the full path words it
    return _event_keep(call, digest, params, timestamp, meter_event_fields)


@api_endpoint(POST=F, fast=_meter_event_fast)
def meter_events(request: HttpRequest, call: ApiCall) -> dict[str, Any]:
    """Record one event. Its validation errors come back at once, with the core's code
    (Stripe reports some of them later). Without an identifier one is made: from the
    Idempotency-Key when there is one, so a retry of a request whose reply was lost records
    nothing twice. An event the core's precheck passes is kept in the inbox and counted
    within a second (``_meter_event_fast``); this full path handles the rest."""
    params, timestamp = _meter_event_params(call)
    event = _event_record(call, params, timestamp)
    return meter_event_object(event)


def _meter_event_params(call: ApiCall) -> tuple[dict[str, Any], datetime | None]:
    params = METER_EVENT_CREATE.check(call.params)
    timestamp = None
    if "timestamp" in params:
        timestamp = _moment(
            params,
            "timestamp",
            "it must be Unix seconds within the past 35 days or up to 5 minutes ahead",
            "timestamp_too_far_in_past" if params["timestamp"] < 0 else "timestamp_in_future",
        )
    return params, timestamp


def _identifier(call: ApiCall, params: dict[str, Any]) -> tuple[str | None, bool]:
    """The event's identifier (None: the core makes one), and whether it was derived from
    the Idempotency-Key."""
    identifier = params.get("identifier")
    if identifier or not call.idempotency_key:
        return identifier, False
    seed = f"{call.key.pk}:{call.idempotency_key}".encode()
    return "evt_" + hashlib.sha256(seed).hexdigest()[:32], True


def _event_keep(
    call: ApiCall,
    digest: str,
    params: dict[str, Any],
    timestamp: datetime | None,
    shape: Callable[[str, str, dict[str, Any], datetime, datetime], dict[str, Any]],
) -> tuple[int, str] | None:
    """Keep an event the core's precheck passes in the inbox, with its reply for the
    Idempotency-Key; the reply, or None for the full path (the precheck's doubt, a taken
    identifier or Idempotency-Key, a revoked key or an inactive meter)."""
    identifier, _ = _identifier(call, params)
    now = timezone.now()
    prechecked = meter_event_precheck(
        EventInput(
            event_name=params["event_name"],
            payload=params["payload"],
            identifier=identifier,
            timestamp=timestamp,
        ),
        now,
    )
    if prechecked is None:
        return None
    candidate = prechecked.candidate
    meter = candidate.meter
    reply = json_text(
        shape(meter.event_name, candidate.identifier, candidate.payload, now, candidate.timestamp)
    )
    # Kept with its timestamp even when none was sent (the second it came, as the reply
    # says), so the drain takes it set-based with the rest. The per-event rule for an
    # identifier sent again without a timestamp (a duplicate whenever it comes) is applied to
    # the one sent again: its identifier is taken, so it takes the full path.
    kept = meter_event_keep(
        api_key=call.key,
        event={
            "event_name": candidate.meter.event_name,
            "payload": candidate.payload,
            "identifier": candidate.identifier,
            "timestamp": int(candidate.timestamp.timestamp()),
        },
        meter_id=candidate.meter.pk,
        customer_ref=prechecked.customer_ref,
        now=now,
        reply=(call.idempotency_key, digest, 200, reply) if call.idempotency_key else None,
    )
    return (200, reply) if kept else None


def _event_record(call: ApiCall, params: dict[str, Any], timestamp: datetime | None) -> MeterEvent:
    """One event through the core (v1 and v2 alike): the stored event, or Stripe's error. An
    event waiting in the inbox with the same identifier is stored first, so the core finds
    this one a duplicate or a conflict of it."""
    identifier, derived = _identifier(call, params)
    if identifier:
        inbox_identifier_settle(identifier)
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
    return MeterEvent.objects.select_related("meter").get(identifier=result.identifier)


ADJUSTMENT_CREATE = Spec(
    {
        "event_name": "str",
        "type": "str",
        "cancel": Spec({"identifier": "str"}, max_lengths={"identifier": 100}),
        **_EXPAND,
    },
    required=frozenset({"event_name", "type"}),
    max_lengths={"event_name": 100},
)
CANCEL_WINDOW = timedelta(hours=24)  # Stripe: events received within the last 24 hours


@api_endpoint(POST=F)
def meter_event_adjustments(request: HttpRequest, call: ApiCall) -> dict[str, Any]:
    """Cancel one event by identifier, as Stripe allows: within 24 hours of its receipt. Done
    at once, so the reply says ``complete`` (Stripe's says ``pending``)."""
    params = ADJUSTMENT_CREATE.check(call.params)
    return adjustment_object(_cancel(call, params), params["event_name"])


def _cancel(call: ApiCall, params: dict[str, Any]) -> str:
    if params["type"] != "cancel":
        raise invalid("Invalid type: must be cancel.", param="type")
    identifier = params.get("cancel", {}).get("identifier", "")
    if not identifier:
        raise invalid(
            "Missing cancel[identifier]: name the event to cancel.",
            param="cancel[identifier]",
            code="parameter_missing",
        )
    event = event_by_identifier(identifier)
    if event is None or event.meter.event_name != params["event_name"]:
        raise invalid(
            f"No meter event '{identifier[:100]}' for event_name '{params['event_name'][:100]}'.",
            param="cancel[identifier]",
            code="resource_missing",
        )
    if event.received_at < timezone.now() - CANCEL_WINDOW:
        raise invalid(
            "Events can be cancelled within 24 hours of their receipt; this one was received "
            f"{event.received_at:%Y-%m-%d %H:%M} UTC. Send a negative value to correct it.",
            param="cancel[identifier]",
            code="cancel_window_passed",
        )
    try:
        meter_event_cancel(event=event, user=call.key.user)
    except EventCancelError as error:
        raise invalid(
            " ".join(error.messages), param="cancel[identifier]", code="already_cancelled"
        ) from error
    return identifier


# --- Meter event summaries ------------------------------------------------------------------------
SUMMARIES = Spec(
    {
        "customer": "str",
        "start_time": "int",
        "end_time": "int",
        "value_grouping_window": "str",
        "limit": "int",
        "starting_after": "str",
        "ending_before": "str",
        **_EXPAND,
    },
    required=frozenset({"customer", "start_time", "end_time"}),
)


@api_endpoint(GET=S)
def meter_event_summaries_view(
    request: HttpRequest, call: ApiCall, meter_id: str
) -> dict[str, Any]:
    """The customer's usage per hour, per day or over the range, read from the rollups by the
    selector the pages use; Stripe's alignment rules and cursor paging (oldest first)."""
    found = meter_by_public_id(meter_id)
    params = SUMMARIES.check(call.params)
    customer = customer_by_external_id(params["customer"])
    window = params.get("value_grouping_window", "")
    if window not in ("", Grouping.HOUR, Grouping.DAY):
        raise invalid(
            "Invalid value_grouping_window: must be one of day or hour.",
            param="value_grouping_window",
        )
    grouping = window or Grouping.NONE
    limit = params.get("limit", 10)
    if not 1 <= limit <= 100:
        raise invalid("Invalid limit: must be between 1 and 100.", param="limit")
    start, end = _moment(params, "start_time"), _moment(params, "end_time")
    try:
        usage_range_validate(start=start, end=end, grouping=grouping)
    except ValidationError as error:
        message = error.messages[0]
        param = "start_time" if "start time" in message else "end_time"
        raise invalid(message, param=param, code=error.error_list[0].code or "") from error
    page_start, page_end, has_more = summary_page(
        meter_public_id=found.meter_id,
        start=start,
        end=end,
        grouping=grouping,
        limit=limit,
        starting_after=params.get("starting_after", ""),
        ending_before=params.get("ending_before", ""),
    )
    summaries = []
    if page_start < page_end:
        summaries = meter_event_summaries(
            meter=found, customer=customer, start=page_start, end=page_end, grouping=grouping
        )
    return list_object(
        f"/v1/billing/meters/{found.meter_id}/event_summaries",
        [summary_object(found, summary) for summary in summaries],
        has_more,
    )


def _moment(
    params: dict[str, Any],
    name: str,
    why: str = "not a time this portal can read",
    code: str = "parameter_invalid",
) -> datetime:
    """Unix seconds ``params[name]`` as a UTC time, or Stripe's error naming the parameter."""
    try:
        return datetime.fromtimestamp(params[name], tz=UTC)
    except (OverflowError, OSError, ValueError) as error:
        raise invalid(f"Invalid {name}: {why}.", param=name, code=code) from error


# --- v2 (JSON; times in RFC 3339) ----------------------------------------------------------------
V2_EVENT = Spec(
    {"event_name": "str", "payload": "strmap", "identifier": "str", "timestamp": "str"},
    required=frozenset({"event_name", "payload"}),
)
V2_ADJUSTMENT = Spec(
    {
        "event_name": "str",
        "type": "str",
        "cancel": Spec({"identifier": "str"}, required=frozenset({"identifier"})),
    },
    required=frozenset({"event_name", "type", "cancel"}),
    max_lengths={"event_name": 100},
)


def _v2_event_params(call: ApiCall) -> tuple[dict[str, Any], datetime | None]:
    params = V2_EVENT.check(call.params)
    timestamp = rfc3339_parse(params["timestamp"], "timestamp") if "timestamp" in params else None
    return params, timestamp


def _v2_event_fast(call: ApiCall, digest: str) -> tuple[int, str] | None:
    try:
        params, timestamp = _v2_event_params(call)
    except ApiError:
        return None
    return _event_keep(call, digest, params, timestamp, v2_meter_event_fields)


@api_endpoint(POST=F, body="json", fast=_v2_event_fast)
def v2_meter_events(request: HttpRequest, call: ApiCall) -> dict[str, Any]:
    """One event, as v1 but in JSON with RFC 3339 times."""
    params, timestamp = _v2_event_params(call)
    return v2_meter_event_object(_event_record(call, params, timestamp))


@api_endpoint(POST=F, body="json")
def v2_meter_event_adjustments(request: HttpRequest, call: ApiCall) -> dict[str, Any]:
    params = V2_ADJUSTMENT.check(call.params)
    identifier = _cancel(call, params)
    return v2_adjustment_object(identifier, params["event_name"], timezone.now())


@api_endpoint(POST=F, body="json")
def v2_meter_event_session(request: HttpRequest, call: ApiCall) -> dict[str, Any]:
    """A token for the stream, valid for 15 minutes."""
    Spec({}).check(call.params)
    session, token = meter_event_session_create(api_key=call.key, now=timezone.now())
    return v2_session_object(session, token)


STREAM_MAX_EVENTS = 100  # Stripe's limit per stream request
STREAM_EVENT = Spec(
    {"event_name": "str", "payload": "strmap", "identifier": "str", "timestamp": "str"},
    required=frozenset({"event_name", "payload"}),
)


@api_endpoint(POST=F, body="json", auth="session")
def v2_meter_event_stream(request: HttpRequest, call: ApiCall) -> tuple[int, dict[str, Any]]:
    """Up to 100 events, stored durably before the 202 and recorded by workers: checked here
    for shape only; their content is validated as they are recorded, and what fails is
    reported afterwards, as on Stripe."""
    unknown = sorted(set(call.params) - {"events"})
    if unknown:
        raise invalid(f"Received unknown parameter: {unknown[0][:100]}", param=unknown[0][:100])
    events = call.params.get("events")
    if not isinstance(events, list) or not events:
        code = "parameter_missing" if events is None else "parameter_invalid"
        raise invalid("Send events: a list of 1 to 100 meter events.", param="events", code=code)
    if len(events) > STREAM_MAX_EVENTS:
        raise invalid(
            f"Too many events: {len(events)}; a stream request takes at most {STREAM_MAX_EVENTS}.",
            param="events",
        )
    shaped = []
    for number, event in enumerate(events):
        prefix = f"events[{number}]"
        if not isinstance(event, dict):
            raise invalid(f"Invalid object: {prefix} must be an object.", param=prefix)
        checked = STREAM_EVENT.check(event, prefix=prefix)
        at = checked.get("timestamp")
        shaped.append(
            {
                "event_name": checked["event_name"],
                "payload": checked["payload"],
                "identifier": checked.get("identifier", ""),
                "timestamp": None
                if at is None
                else int(rfc3339_parse(at, f"{prefix}[timestamp]").timestamp()),
            }
        )
    try:
        stream_request_store(api_key=call.key, events=shaped, now=timezone.now())
    except KeyRevoked:
        raise ApiError(401, "The session's API key is revoked.", code="api_key_invalid") from None
    return 202, {}


ERROR_REPORTS = Spec({"start_time": "int", **_EXPAND})


@api_endpoint(GET=S)
def meter_event_error_reports(request: HttpRequest, call: ApiCall, meter_id: str) -> dict[str, Any]:
    """The portal's answer to Stripe's error-report webhooks: the meter's rejected events by
    error code since ``start_time`` (default: the last 24 hours), with how many, when the
    latest was, its message and the event as received. The stream's content errors land
    here, as every source's do."""
    found = meter_by_public_id(meter_id)
    params = ERROR_REPORTS.check(call.params)
    since = (
        _moment(params, "start_time")
        if "start_time" in params
        else timezone.now() - timedelta(hours=24)
    )
    reports = meter_rejections_by_code(meter=found, since=since)
    return list_object(
        f"/v1/billing/meters/{found.meter_id}/event_error_reports",
        [error_report_object(found, report) for report in reports],
        False,
    )


# --- Anything else under /v1 and /v2 ------------------------------------------------------------
@api_endpoint(GET=S, POST=S, DELETE=S, PUT=S, PATCH=S)
def not_found(request: HttpRequest, call: ApiCall, rest: str = "") -> dict[str, Any]:
    raise unrecognized(request)
