"""Meter event creates kept in the inbox: answered at once, counted once when drained, their
identifier taken meanwhile; a key revoked or a meter deactivated by another process stops
them at once; drained rows and old Idempotency-Key replies are pruned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import stripe
import time_machine
from django.contrib.auth.models import User
from django.utils import timezone

from api.models import ApiKey, IdempotentReply, StreamRequest
from api.objects import meter_event_object
from api.stream import stream_drain
from api.tasks import prune_task
from customers.models import Customer
from events.models import MeterEvent
from meters.models import Meter
from tests.factories import CustomerFactory, MeterFactory
from usage.summaries import meter_usage_aggregate
from usage_portal.roles import Role

pytestmark = pytest.mark.django_db(transaction=True)


def usage_of(meter: Meter, customer_ref: str) -> Decimal:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return meter_usage_aggregate(
        meter=meter,
        customer=Customer.objects.get(external_id=customer_ref),
        start=now - timedelta(days=2),
        end=now + timedelta(hours=1),
    ).aggregated_value


def body(value: str = "5", ref: str = "cus_in", **extra: object) -> dict[str, object]:
    return {"event_name": "tokens", "payload": {"stripe_customer_id": ref, "value": value}, **extra}


def test_a_kept_event_takes_its_identifier_before_it_is_counted(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_in")
    events = client_for(Role.FINANCE).v1.billing.meter_events
    at = int((datetime.now(UTC) - timedelta(hours=2)).timestamp())
    reply = events.create(body(identifier="kept-1", timestamp=at))
    waiting = StreamRequest.objects.get()
    assert (waiting.identifier, waiting.drained_at) == ("kept-1", None)
    assert not MeterEvent.objects.exists()  # answered, not yet counted
    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        events.create(body(identifier="kept-1", timestamp=at))
    assert (duplicate.value.http_status, duplicate.value.code) == (400, "duplicate_meter_event")
    with pytest.raises(stripe.InvalidRequestError) as conflict:
        events.create(body("6", identifier="kept-1", timestamp=at))
    assert conflict.value.code == "duplicate_meter_event_conflict"
    stream_drain()
    assert usage_of(meter, "cus_in") == 5
    stored = MeterEvent.objects.select_related("meter").get()
    expected = meter_event_object(stored)
    assert (reply.identifier, reply.event_name, reply.payload.to_dict(), reply.timestamp) == (
        expected["identifier"],
        expected["event_name"],
        expected["payload"],
        expected["timestamp"],
    )
    assert reply.timestamp == at


def test_an_event_without_timestamp_is_counted_at_the_second_it_was_answered(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_in")
    events = client_for(Role.FINANCE).v1.billing.meter_events
    replies = [events.create(body("2")) for _ in range(3)]
    assert len({reply.identifier for reply in replies}) == 3
    assert StreamRequest.objects.count() == 3
    stream_drain()
    stored = {e.identifier: int(e.timestamp.timestamp()) for e in MeterEvent.objects.all()}
    assert stored == {reply.identifier: reply.timestamp for reply in replies}
    assert usage_of(meter, "cus_in") == 6
    # Sent again without a timestamp, later: a duplicate whatever the time.
    with pytest.raises(stripe.InvalidRequestError) as again:
        events.create(body("2", identifier=replies[0].identifier))
    assert again.value.code == "duplicate_meter_event"


def test_a_key_revoked_by_another_process_records_nothing_at_once(client_for, secret_for) -> None:
    MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_in")
    events = client_for(Role.FINANCE).v1.billing.meter_events
    events.create(body())  # this process now trusts the key for a while
    # Revoked as another web process would: this one's reading of the key is not forgotten.
    key = ApiKey.objects.get()
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    User.objects.filter(pk=key.user_id).update(is_active=False)
    with pytest.raises(stripe.AuthenticationError) as raised:
        events.create(body("7"))
    assert raised.value.http_status == 401
    assert StreamRequest.objects.count() == 1


def test_a_meter_deactivated_by_another_process_refuses_events_at_once(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_in")
    events = client_for(Role.FINANCE).v1.billing.meter_events
    events.create(body())
    Meter.objects.filter(pk=meter.pk).update(status="inactive", deactivated_at=timezone.now())
    with pytest.raises(stripe.InvalidRequestError) as raised:
        events.create(body("7"))
    assert (raised.value.http_status, raised.value.code) == (400, "archived_meter")
    assert StreamRequest.objects.count() == 1


def test_v2_creates_are_kept_too_and_replay_their_idempotency_key(client_for) -> None:
    meter = MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_in")
    events = client_for(Role.FINANCE).v2.billing.meter_events
    first = events.create(body("3"), {"idempotency_key": "v2-once"})
    again = events.create(body("3"), {"idempotency_key": "v2-once"})
    assert again.identifier == first.identifier
    assert StreamRequest.objects.count() == 1
    with pytest.raises(stripe.IdempotencyError):
        events.create(body("4"), {"idempotency_key": "v2-once"})
    stream_drain()
    assert usage_of(meter, "cus_in") == 3


def test_drained_rows_and_old_replies_are_pruned(client_for) -> None:
    MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_in")
    events = client_for(Role.FINANCE).v1.billing.meter_events
    for number in range(3):
        events.create(body(), {"idempotency_key": f"p-{number}"})
    events.create(body())  # waits: not drained, so kept
    stream_drain()
    events.create(body())
    long_ago = timezone.now() - timedelta(hours=2)
    StreamRequest.objects.filter(drained_at__isnull=False).update(
        received_at=long_ago, drained_at=long_ago
    )
    IdempotentReply.objects.filter(key="p-0").update(created=timezone.now() - timedelta(days=3))
    assert prune_task() == 4 + 1
    assert StreamRequest.objects.count() == 1  # the one not drained
    kept = IdempotentReply.objects.filter(key__startswith="p-").values_list("key", flat=True)
    assert sorted(kept) == ["p-1", "p-2"]  # (the SDK sends a key of its own with the others)
    assert MeterEvent.objects.count() == 4


def test_an_idempotency_key_used_with_another_identifier_keeps_nothing(client_for) -> None:
    """The row and the key's reply are kept together or not at all (PostgreSQL: one
    statement that fails when the reply could not be kept)."""
    meter = MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_in")
    events = client_for(Role.FINANCE).v1.billing.meter_events
    events.create(body(identifier="first"), {"idempotency_key": "same-key"})
    with pytest.raises(stripe.IdempotencyError) as raised:
        events.create(body(identifier="second"), {"idempotency_key": "same-key"})
    assert raised.value.http_status == 400
    assert list(StreamRequest.objects.values_list("identifier", flat=True)) == ["first"]
    stream_drain()
    assert usage_of(meter, "cus_in") == 5


def test_an_event_answered_inside_the_window_counts_however_late_it_is_drained(
    client_for,
) -> None:
    """The accepted window is the one of its receipt: a worker that was down for a while
    refuses nothing it answered 200 for."""
    meter = MeterFactory.create(event_name="tokens")
    CustomerFactory.create(external_id="cus_in")
    almost_too_old = int(
        (datetime.now(UTC) - timedelta(days=35) + timedelta(seconds=30)).timestamp()
    )
    client_for(Role.FINANCE).v1.billing.meter_events.create(
        body(identifier="late", timestamp=almost_too_old)
    )
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=2)):
        stream_drain()
    assert MeterEvent.objects.filter(identifier="late").exists()
    assert Decimal(MeterEvent.objects.get(identifier="late").value) == 5
    assert meter.pk == MeterEvent.objects.get(identifier="late").meter_id


def test_other_writes_refuse_a_key_revoked_by_another_process_at_once(client_for) -> None:
    client = client_for(Role.ADMIN)
    client.v1.billing.meters.list()  # this process now trusts the key for a while
    key = ApiKey.objects.get()
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    with pytest.raises(stripe.AuthenticationError):
        client.v1.billing.meters.create(
            {
                "display_name": "Late",
                "event_name": "late",
                "default_aggregation": {"formula": "sum"},
            }
        )
    assert not Meter.objects.filter(event_name="late").exists()
    with pytest.raises(stripe.AuthenticationError):
        client.v2.billing.meter_event_session.create()
