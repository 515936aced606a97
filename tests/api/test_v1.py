"""v1 through the official stripe SDK over real HTTP: meters, meter events, the values they
add, and every error as the SDK raises it (class, HTTP status, code, param)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests
import stripe

from api.models import ApiKey
from api.services import api_key_revoke
from api.stream import stream_drain
from customers.models import Customer
from events.models import EventBatch, MeterEvent
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory
from usage.summaries import meter_usage_aggregate
from usage_portal.models import AuditEntry
from usage_portal.roles import Role

pytestmark = pytest.mark.django_db(transaction=True)


def usage_of(meter: Meter, customer: Customer) -> Decimal:
    """The customer's usage once the inbox is drained (as a worker drains it)."""
    stream_drain()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return meter_usage_aggregate(
        meter=meter, customer=customer, start=now - timedelta(days=2), end=now + timedelta(hours=1)
    ).aggregated_value


# --- Meters ----------------------------------------------------------------------------------
def test_an_admin_key_manages_meters_with_the_client(client_for) -> None:
    client = client_for(Role.ADMIN)
    meters = client.v1.billing.meters

    created = meters.create(
        {
            "display_name": "API calls",
            "event_name": "api_call",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "account", "type": "by_id"},
            "value_settings": {"event_payload_key": "units"},
        }
    )
    assert isinstance(created, stripe.billing.Meter)
    assert created.id.startswith("mtr_")
    assert (created.event_name, created.default_aggregation.formula) == ("api_call", "sum")
    assert created.customer_mapping.event_payload_key == "account"
    assert created.value_settings.event_payload_key == "units"
    assert created.event_time_window is None and created.status == "active"
    stored = Meter.objects.get(meter_id=created.id)
    assert (stored.customer_mapping_key, stored.value_settings_key) == ("account", "units")

    renamed = meters.update(created.id, {"display_name": "API requests"})
    assert renamed.display_name == "API requests"
    assert meters.retrieve(created.id).display_name == "API requests"

    deactivated = meters.deactivate(created.id)
    assert deactivated.status == "inactive"
    assert isinstance(deactivated.status_transitions.deactivated_at, int)
    assert meters.reactivate(created.id).status == "active"

    # Recorded with the key's name, as staff's changes are.
    actors = set(
        AuditEntry.objects.filter(target_type="meters.meter", target_id=str(stored.pk)).values_list(
            "actor__username", flat=True
        )
    )
    assert actors == {ApiKey.objects.get().user.username}
    assert ApiKey.objects.get().user.username.startswith("api:admin-key")


def test_meters_page_newest_first_with_the_legacy_module_style(api_base, secret_for) -> None:
    for number in range(5):
        MeterFactory.create(event_name=f"paged_{number}")
    stripe.api_key = secret_for(Role.SUPPORT)
    stripe.api_base = api_base

    first = stripe.billing.Meter.list(limit=2)
    assert isinstance(first, stripe.ListObject)
    assert first.has_more is True and first.url == "/v1/billing/meters"
    names = [meter.event_name for meter in stripe.billing.Meter.list(limit=2).auto_paging_iter()]
    assert names == [f"paged_{number}" for number in reversed(range(5))]
    assert [
        m.event_name for m in stripe.billing.Meter.list(limit=3, ending_before=first.data[1].id)
    ] == ["paged_4"]
    Meter.objects.filter(event_name="paged_0").update(
        status="inactive", deactivated_at=datetime.now(UTC)
    )
    inactive = stripe.billing.Meter.list(status="inactive")
    assert [meter.event_name for meter in inactive] == ["paged_0"]
    assert stripe.billing.Meter.retrieve(first.data[0].id).event_name == "paged_4"


def test_a_support_key_reads_meters_but_cannot_change_them(client_for) -> None:
    meter = MeterFactory.create()
    client = client_for(Role.SUPPORT)
    assert client.v1.billing.meters.retrieve(meter.meter_id).id == meter.meter_id
    with pytest.raises(stripe.PermissionError) as raised:
        client.v1.billing.meters.update(meter.meter_id, {"display_name": "nope"})
    assert raised.value.http_status == 403
    assert raised.value.error is not None and raised.value.error.code == "insufficient_role"
    assert "needs the admin role" in raised.value.user_message
    assert Meter.objects.get(pk=meter.pk).display_name == meter.display_name


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"display_name": "x", "event_name": "e"}, "default_aggregation", "parameter_missing"),
        (
            {"display_name": "x", "event_name": "e", "default_aggregation": {"formula": "max"}},
            "default_aggregation[formula]",
            "invalid_choice",
        ),
        (
            {"display_name": "x", "event_name": "e", "default_aggregation": {"formula": "sum"},
             "colour": "blue"},
            "colour",
            "parameter_invalid",
        ),
        (
            {"display_name": "x" * 251, "event_name": "e",
             "default_aggregation": {"formula": "sum"}},
            "display_name",
            "parameter_invalid",
        ),
        (
            {"display_name": "x", "event_name": "taken", "default_aggregation": {"formula": "sum"}},
            "event_name",
            "duplicate_event_name",
        ),
    ],
)  # fmt: skip
def test_a_bad_meter_is_refused_with_its_parameter(client_for, params, param, code) -> None:
    MeterFactory.create(event_name="taken")
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client_for(Role.ADMIN).v1.billing.meters.create(params)
    assert raised.value.http_status == 400
    assert (raised.value.param, raised.value.code) == (param, code)
    assert Meter.objects.count() == 1


def test_a_missing_meter_is_a_404_with_request_id(client_for) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client_for(Role.SUPPORT).v1.billing.meters.retrieve("mtr_nope")
    assert raised.value.http_status == 404
    assert raised.value.code == "resource_missing"
    assert "No such billing meter: 'mtr_nope'" in raised.value.user_message
    assert str(raised.value.request_id).startswith("req_")


# --- Meter events ----------------------------------------------------------------------------
def test_events_sent_with_the_sdk_count_with_exactly_their_sum(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_api")
    client = client_for(Role.FINANCE)
    values = ["1.10", "2.25", "0.000001", "-0.5"]
    for number, value in enumerate(values):
        event = client.v1.billing.meter_events.create(
            {
                "event_name": "tokens",
                "payload": {"stripe_customer_id": "cus_api", "value": value},
                "identifier": f"api-{number}",
            }
        )
        assert isinstance(event, stripe.billing.MeterEvent)
        assert (event.identifier, event.payload["value"]) == (f"api-{number}", value)
    # Without an identifier one is made; a timestamp is kept to the second.
    at = int((datetime.now(UTC) - timedelta(hours=3)).timestamp())
    made = client.v1.billing.meter_events.create(
        {"event_name": "tokens", "payload": {"stripe_customer_id": "cus_api", "value": "4"},
         "timestamp": at}
    )  # fmt: skip
    assert made.identifier.startswith("evt_") and made.timestamp == at

    assert usage_of(meter, customer) == sum(map(Decimal, values), Decimal(4))
    batches = EventBatch.objects.filter(source=EventBatch.Source.API)
    assert {batch.user.username for batch in batches if batch.user} == {
        ApiKey.objects.get().user.username
    }
    assert all(batch.user for batch in batches)


def test_the_legacy_style_records_an_event(api_base, secret_for) -> None:
    meter = MeterFactory.create(event_name="calls", aggregation_formula="count")
    customer = CustomerFactory.create(external_id="cus_legacy")
    stripe.api_key = secret_for(Role.FINANCE)
    stripe.api_base = api_base
    event = stripe.billing.MeterEvent.create(
        event_name="calls", payload={"stripe_customer_id": "cus_legacy"}
    )
    assert event.event_name == "calls"
    assert usage_of(meter, customer) == 1


@pytest.mark.parametrize(
    ("payload", "extra", "code", "param"),
    [
        ({"stripe_customer_id": "cus_nobody", "value": "1"}, {}, "meter_event_customer_not_found",
         "payload[stripe_customer_id]"),
        ({"value": "1"}, {}, "meter_event_no_customer_defined", "payload[stripe_customer_id]"),
        ({"stripe_customer_id": "cus_e"}, {}, "meter_event_value_not_found", "payload[value]"),
        ({"stripe_customer_id": "cus_e", "value": "1,000"}, {}, "meter_event_invalid_value",
         "payload[value]"),
        ({"stripe_customer_id": "cus_e", "value": "1234567890123456"}, {},
         "meter_event_value_too_many_digits", "payload[value]"),
        ({"stripe_customer_id": "cus_e", "value": "1"}, {"timestamp": 1_000_000_000},
         "timestamp_too_far_in_past", "timestamp"),
        ({"stripe_customer_id": "cus_e", "value": "1"}, {"timestamp": 99_999_999_999_999},
         "timestamp_in_future", "timestamp"),
        ({"stripe_customer_id": "cus_e", "value": "1"}, {"identifier": "x" * 101},
         "identifier_too_long", "identifier"),
        ({"stripe_customer_id": "cus_e", "value": "1"}, {"event_name": "nothing_here"}, "no_meter",
         "event_name"),
        ({"stripe_customer_id": "cus_e", "value": "1"}, {"colour": "blue"}, "parameter_invalid",
         "colour"),
    ],
)  # fmt: skip
def test_a_bad_event_is_refused_at_once_with_the_cores_code(
    client_for, payload, extra, code, param
) -> None:
    MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_e")
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client_for(Role.FINANCE).v1.billing.meter_events.create(
            {"event_name": "tokens", "payload": payload, **extra}
        )
    assert raised.value.http_status == 400
    assert (raised.value.code, raised.value.param) == (code, param)
    assert raised.value.user_message
    assert not MeterEvent.objects.exists()


def test_an_identifier_again_is_a_duplicate_and_other_content_a_conflict(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_d")
    events = client_for(Role.FINANCE).v1.billing.meter_events
    body = {"event_name": "tokens", "payload": {"stripe_customer_id": "cus_d", "value": "5"}}
    events.create({**body, "identifier": "once"})
    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        events.create({**body, "identifier": "once"})
    assert duplicate.value.code == "duplicate_meter_event"
    assert "An event already exists with identifier once" in duplicate.value.user_message
    with pytest.raises(stripe.InvalidRequestError) as conflict:
        events.create(
            {**body, "identifier": "once", "payload": {"stripe_customer_id": "cus_d", "value": "6"}}
        )
    assert conflict.value.code == "duplicate_meter_event_conflict"
    assert usage_of(meter, customer) == 5


def test_an_idempotency_key_replays_and_refuses_other_parameters(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_i")
    events = client_for(Role.FINANCE).v1.billing.meter_events
    body = {"event_name": "tokens", "payload": {"stripe_customer_id": "cus_i", "value": "3"}}
    first = events.create(body, {"idempotency_key": "retry-1"})
    again = events.create(body, {"idempotency_key": "retry-1"})
    assert again.identifier == first.identifier  # the stored reply, not a second event
    assert usage_of(meter, customer) == 3
    with pytest.raises(stripe.IdempotencyError) as raised:
        events.create({**body, "payload": {"stripe_customer_id": "cus_i", "value": "4"}},
                      {"idempotency_key": "retry-1"})  # fmt: skip
    assert raised.value.http_status == 400
    assert usage_of(meter, customer) == 3
    # The same key from another API key is that key's own.
    other = client_for(Role.FINANCE).v1.billing.meter_events.create(
        body, {"idempotency_key": "retry-1"}
    )
    assert other.identifier != first.identifier
    assert usage_of(meter, customer) == 6


def test_a_replayed_reply_says_so(api_base, secret_for) -> None:
    MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_r")
    headers = {"Authorization": f"Bearer {secret_for(Role.FINANCE)}", "Idempotency-Key": "k-1"}
    data = {"event_name": "tokens", "payload[stripe_customer_id]": "cus_r", "payload[value]": "1"}
    url = f"{api_base}/v1/billing/meter_events"
    first = requests.post(url, data=data, headers=headers, timeout=10)
    second = requests.post(url, data=data, headers=headers, timeout=10)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.headers["Request-Id"] != second.headers["Request-Id"]


# --- Authentication and unknown paths -----------------------------------------------------------
def test_keys_missing_unknown_revoked_or_too_low_are_refused(client_for, secret_for) -> None:
    MeterFactory.create(event_name="tokens")
    body = {"event_name": "tokens", "payload": {"stripe_customer_id": "cus_x", "value": "1"}}
    with pytest.raises(stripe.AuthenticationError) as unknown:
        client_for(secret="sk_up_not_a_key").v1.billing.meter_events.create(body)
    assert unknown.value.http_status == 401
    secret = secret_for(Role.FINANCE)
    api_key_revoke(api_key=ApiKey.objects.get(), actor=None)
    with pytest.raises(stripe.AuthenticationError) as revoked:
        client_for(secret=secret).v1.billing.meter_events.create(body)
    assert "revoked" in revoked.value.user_message
    with pytest.raises(stripe.PermissionError) as low:
        client_for(Role.SUPPORT).v1.billing.meter_events.create(body)
    assert low.value.http_status == 403
    assert not MeterEvent.objects.exists()


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("get", "/v1/billing/meters", {}, 401),
        ("get", "/v1/billing/meters", {"Authorization": "Basic abc"}, 401),
        ("get", "/v1/nothing/here", "key", 404),
        ("post", "/v2/billing/nothing", "key", 404),
        ("delete", "/v1/billing/meters", "key", 404),
        ("get", "/v1", "key", 404),
    ],
)
def test_other_requests_get_stripes_error_object(
    api_base, secret_for, method, path, headers, status
) -> None:
    if headers == "key":
        headers = {"Authorization": f"Bearer {secret_for(Role.ADMIN)}"}
    reply = requests.request(method, api_base + path, headers=headers, timeout=10)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert reply.headers["Request-Id"].startswith("req_")


def test_malformed_form_keys_get_an_error_naming_them(api_base, secret_for) -> None:
    headers = {"Authorization": f"Bearer {secret_for(Role.FINANCE)}"}
    for body in ("payload[a=1", "payload=1&payload[a]=2", "event_name[x]=1&event_name=2"):
        reply = requests.post(
            f"{api_base}/v1/billing/meter_events",
            data=body,
            headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
        assert reply.status_code == 400, body
        assert reply.json()["error"]["param"], body
