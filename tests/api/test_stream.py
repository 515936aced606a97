"""The v2 event stream: a 202 once the events are stored, a real worker records them once,
content errors are recorded afterwards as rejections."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
from django.conf import settings
from django.urls import reverse

from api.models import MeterEventSession, StreamRequest
from api.stream import stream_drain
from api.tasks import stream_drain_task
from customers.models import Customer
from events.models import EventRejection, MeterEvent
from meters.models import Meter
from tests.conftest import worker_environment
from tests.factories import CustomerFactory, MeterFactory
from usage.summaries import meter_usage_aggregate
from usage_portal.roles import Role

pytestmark = pytest.mark.django_db(transaction=True)


def usage_of(meter: Meter, customer: Customer) -> Decimal:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return meter_usage_aggregate(
        meter=meter, customer=customer, start=now - timedelta(days=2), end=now + timedelta(hours=1)
    ).aggregated_value


def stream_client(client_for, api_base: str, role: Role = Role.FINANCE) -> stripe.StripeClient:
    session = client_for(role).v2.billing.meter_event_session.create()
    return client_for(secret=session.authentication_token)


def events_of(count: int, *, start: int = 0, ref: str = "cus_st", value: str = "1.5") -> list:
    return [
        {"event_name": "tokens", "payload": {"stripe_customer_id": ref, "value": value},
         "identifier": f"st-{start + n}"}
        for n in range(count)
    ]  # fmt: skip


def test_streamed_events_are_stored_at_once_and_recorded_once(
    client_for, api_base, secret_for, support_client
) -> None:
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_st")
    stream = stream_client(client_for, api_base).v2.billing.meter_event_stream
    stream.create({"events": events_of(100)})  # 202 {}: the SDK returns None
    stream.create(
        {"events": [*events_of(50, start=100), *events_of(3, start=150, ref="cus_nobody")]}
    )
    stream.create({"events": events_of(10)})  # the same identifiers again: duplicates
    assert StreamRequest.objects.filter(drained_at__isnull=True).count() == 3

    assert stream_drain() == 163
    assert stream_drain() == 0
    assert usage_of(meter, customer) == Decimal("1.5") * 150
    assert MeterEvent.objects.count() == 150
    rejected = EventRejection.objects.filter(code="meter_event_customer_not_found")
    assert rejected.count() == 3 and rejected.first().meter == meter  # type: ignore[union-attr]

    # Reported afterwards: the API lists them, and the meter's page shows them.
    response = requests.get(
        f"{api_base}/v1/billing/meters/{meter.meter_id}/event_error_reports",
        headers={"Authorization": f"Bearer {secret_for(Role.SUPPORT)}"},
        timeout=10,
    )
    data = response.json()["data"]
    assert len(data) == 1, data
    (report,) = data
    assert (report["code"], report["count"]) == ("meter_event_customer_not_found", 3)
    assert report["sample"]["payload[stripe_customer_id]"] == "cus_nobody"
    assert "cus_nobody" in report["message"] and report["last_seen_at"]
    page = support_client.get(reverse("usage:meter_overview", args=[meter.meter_id]))
    assert b"meter_event_customer_not_found" in page.content
    assert b"payload[stripe_customer_id]=cus_nobody" in page.content


def test_streamed_events_naming_no_meter_are_shown_on_the_home_page(
    client_for, api_base, support_client
) -> None:
    """No meter's page can list them: the dashboard does, with who sent them."""
    CustomerFactory.create(external_id="cus_st")
    stream = stream_client(client_for, api_base).v2.billing.meter_event_stream
    typo: list[Any] = [{**event, "event_name": "<b>tokenz</b>"} for event in events_of(4)]
    stream.create({"events": typo})
    stream_drain()
    # The latest as an upload's row would be kept: a column named like a dict's method.
    latest = EventRejection.objects.filter(code="no_meter").latest("id")
    EventRejection.objects.filter(pk=latest.pk).update(raw={**latest.raw, "items": "3"})
    page = support_client.get("/")
    assert page.status_code == 200
    section = page.content.decode().split('id="unknown-event-names"')[1].split("</section>")[0]
    assert "&lt;b&gt;tokenz&lt;/b&gt;" in section and "<b>tokenz" not in section
    assert ">4<" in section and "api:finance-key-" in section and "items=3" in section


@pytest.mark.worker
def test_a_worker_drains_the_stream_and_a_worker_killed_before_loses_nothing(
    client_for, api_base, celery_worker_factory
) -> None:
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_st")
    stream = stream_client(client_for, api_base).v2.billing.meter_event_stream
    for number in range(5):  # no worker yet: stored, waiting
        stream.create({"events": events_of(100, start=number * 100)})
    first = celery_worker_factory()
    first.kill()  # killed before or while it drains: whatever it had not committed stays
    worker = celery_worker_factory()
    for number in range(5, 8):
        stream.create({"events": events_of(100, start=number * 100)})
    deadline = time.monotonic() + 90
    while StreamRequest.objects.filter(drained_at__isnull=True).exists():
        assert time.monotonic() < deadline, "the stream was not drained: " + worker.log[-3000:]
        time.sleep(0.3)
    assert MeterEvent.objects.count() == 800
    assert usage_of(meter, customer) == Decimal("1.5") * 800


@pytest.mark.parametrize(
    ("body", "param"),
    [({"events": events_of(101)}, "events"), ({"events": []}, "events"), ({}, "events"),
     ({"events": ["x"]}, "events[0]"), ({"events": events_of(1), "more": 1}, "more"),
     ({"events": [{**events_of(1)[0], "timestamp": "noon"}]}, "events[0][timestamp]"),
     ({"events": [{"payload": {}}]}, "events[0][event_name]")],
)  # fmt: skip
def test_a_badly_shaped_request_is_refused_whole(client_for, api_base, body, param) -> None:
    stream = stream_client(client_for, api_base).v2.billing.meter_event_stream
    with pytest.raises(stripe.InvalidRequestError) as raised:
        stream.create(body)
    assert raised.value.http_status == 400 and raised.value.param == param
    assert not StreamRequest.objects.exists()


def test_the_stream_wants_a_live_session_token(client_for, api_base, secret_for) -> None:
    with_key = client_for(secret=secret_for(Role.FINANCE))
    with pytest.raises(stripe.AuthenticationError):
        with_key.v2.billing.meter_event_stream.create({"events": events_of(1)})
    client = stream_client(client_for, api_base)
    MeterEventSession.objects.update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(stripe.TemporarySessionExpiredError) as expired:
        client.v2.billing.meter_event_stream.create({"events": events_of(1)})
    assert expired.value.http_status == 401
    with pytest.raises(stripe.PermissionError):
        stream_client(client_for, api_base, Role.SUPPORT).v2.billing.meter_event_stream.create(
            {"events": events_of(1)}
        )
    assert not StreamRequest.objects.exists()


@pytest.mark.worker
def test_a_202_or_a_create_survives_sigkill_of_the_web_server_and_of_every_worker(
    celery_worker_factory, secret_for, sdk_http
) -> None:
    """The production server (gunicorn) in a process of its own: every request answered 202
    is counted once after the server and the worker are killed with SIGKILL."""
    meter = MeterFactory.create(event_name="tokens")
    customer = CustomerFactory.create(external_id="cus_st")
    secret = secret_for(Role.FINANCE)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(settings.BASE_DIR) / ".venv/bin/gunicorn"), "usage_portal.wsgi",
         "--workers", "2", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=settings.BASE_DIR, env=worker_environment(), start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(base + "/v1/billing/meters", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        worker = celery_worker_factory()
        options = {"base_addresses": {"api": base, "meter_events": base}, "http_client": sdk_http}
        session = stripe.StripeClient(secret, **options).v2.billing.meter_event_session.create()
        stream = stripe.StripeClient(session.authentication_token, **options)
        for number in range(20):
            stream.v2.billing.meter_event_stream.create(
                {"events": events_of(100, start=number * 100)}
            )
        creates = stripe.StripeClient(secret, **options).v1.billing.meter_events
        for event in events_of(30, start=5000):  # a v1 200 promises as much as a 202
            creates.create({"event_name": event["event_name"], "payload": event["payload"]})
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # straight after the last reply
        server.wait(timeout=30)
    worker.kill()
    celery_worker_factory()
    stream_drain_task.delay()  # as the periodic sweep would: the drains queued may be lost
    deadline = time.monotonic() + 90
    while StreamRequest.objects.filter(drained_at__isnull=True).exists():
        assert time.monotonic() < deadline, "the stream was not drained"
        time.sleep(0.3)
    assert StreamRequest.objects.count() == 20 + 30
    assert MeterEvent.objects.count() == 2030
    assert usage_of(meter, customer) == Decimal("1.5") * 2030
