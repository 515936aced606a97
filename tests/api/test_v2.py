"""v2 through the official SDK's StripeClient over real HTTP: JSON bodies, RFC 3339 times,
sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests
import stripe

from api.models import MeterEventSession
from api.services import secret_digest
from api.stream import stream_drain
from customers.models import Customer
from events.models import MeterEvent
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory
from usage.summaries import meter_usage_aggregate
from usage_portal.roles import Role

pytestmark = pytest.mark.django_db(transaction=True)


def usage_of(meter: Meter, customer: Customer) -> Decimal:
    """The customer's usage once the inbox is drained (as a worker drains it)."""
    stream_drain()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return meter_usage_aggregate(
        meter=meter, customer=customer, start=now - timedelta(days=2), end=now + timedelta(hours=1)
    ).aggregated_value


def test_v2_events_and_cancels_count_exactly(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_v2")
    client = client_for(Role.FINANCE)
    at = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    event = client.v2.billing.meter_events.create(
        {
            "event_name": "tokens",
            "payload": {"stripe_customer_id": "cus_v2", "value": "2.5"},
            "identifier": "v2-1",
            "timestamp": at.isoformat().replace("+00:00", "Z"),
        }
    )
    assert isinstance(event, stripe.v2.billing.MeterEvent)
    assert event.identifier == "v2-1" and event.timestamp.startswith(
        at.strftime("%Y-%m-%dT%H:%M:%S")
    )
    client.v2.billing.meter_events.create(
        {"event_name": "tokens", "payload": {"stripe_customer_id": "cus_v2", "value": 4}}
    )  # a JSON number, as the SDK sends a Python int
    assert usage_of(meter, customer) == Decimal("6.5")

    adjustment = client.v2.billing.meter_event_adjustments.create(
        {"event_name": "tokens", "type": "cancel", "cancel": {"identifier": "v2-1"}}
    )
    assert adjustment.id.startswith("mtr_event_adj_") and adjustment.status == "complete"
    assert usage_of(meter, customer) == 4
    assert MeterEvent.objects.get(identifier="v2-1").cancelled_at is not None


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"event_name": "tokens", "payload": {"stripe_customer_id": "cus_v2", "value": "1"},
          "timestamp": "yesterday"}, "parameter_invalid", "timestamp"),
        ({"event_name": "tokens", "payload": {"stripe_customer_id": "cus_v2", "value": "1"},
          "timestamp": "2026-03-10T12:00:00"}, "parameter_invalid", "timestamp"),
        ({"event_name": "tokens", "payload": {"stripe_customer_id": "cus_nobody", "value": "1"}},
         "meter_event_customer_not_found", "payload[stripe_customer_id]"),
        ({"event_name": "tokens", "payload": ["not", "an", "object"]}, "parameter_invalid",
         "payload"),
        ({"event_name": "tokens"}, "parameter_missing", "payload"),
    ],
)  # fmt: skip
def test_v2_bad_events_are_refused_with_the_parameter(client_for, body, code, param) -> None:
    MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_v2")
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client_for(Role.FINANCE).v2.billing.meter_events.create(body)
    assert raised.value.http_status == 400
    assert (raised.value.code, raised.value.param) == (code, param)
    assert not MeterEvent.objects.exists()


def test_a_body_that_is_not_a_json_object_is_refused(api_base, secret_for) -> None:
    headers = {
        "Authorization": f"Bearer {secret_for(Role.FINANCE)}",
        "Content-Type": "application/json",
    }
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        reply = requests.post(
            f"{api_base}/v2/billing/meter_events", data=body, headers=headers, timeout=10
        )
        assert reply.status_code == 400, body
        assert reply.json()["error"]["code"] == "invalid_json", body


def test_a_session_token_lasts_15_minutes_and_is_stored_as_a_digest(client_for) -> None:
    session = client_for(Role.FINANCE).v2.billing.meter_event_session.create()
    assert isinstance(session, stripe.v2.billing.MeterEventSession)
    assert session.authentication_token.startswith("mes_tok_")
    created = datetime.fromisoformat(session.created)
    expires = datetime.fromisoformat(session.expires_at)
    assert expires - created == timedelta(minutes=15)
    stored = MeterEventSession.objects.get(public_id=session.id)
    assert stored.token_digest == secret_digest(session.authentication_token)
    with pytest.raises(stripe.PermissionError):
        client_for(Role.SUPPORT).v2.billing.meter_event_session.create()
