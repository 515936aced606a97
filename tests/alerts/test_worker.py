"""Usage alerts through the real path: usage recorded on a page commits, the ingestion core
enqueues the evaluation, a real Celery worker fires the alert once and delivers it to a real
HTTP receiver, retrying after a failure."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from alerts.models import AlertDeliveryAttempt, UsageAlertTrigger
from alerts.services import usage_alert_create
from tests.alerts.alert_receiver import webhook_receiver
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage_portal.roles import Role

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def wait_for(condition, timeout=60.0, worker=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            log = worker.log[-4000:] if worker is not None else ""
            pytest.fail(f"timed out waiting for the worker\n{log}")
        time.sleep(0.2)


def test_manual_usage_fires_the_alert_once_and_the_worker_delivers_it(celery_worker_factory):
    worker = celery_worker_factory(env={"USAGE_ALERT_WEBHOOK_BACKOFF_SECONDS": "0.2"})
    meter, customer = MeterFactory(), CustomerFactory()
    finance = UserFactory(username="fin-alerts", role=Role.FINANCE)
    client = Client()
    client.force_login(finance)
    with webhook_receiver(statuses=[503]) as receiver:
        alert = usage_alert_create(
            actor=None,
            title="Over 10",
            meter=meter,
            threshold=Decimal(10),
            webhook_url=receiver.url,
        )

        def record(value: str) -> None:
            response = client.post(
                reverse("events:event_entry"),
                {"meter": meter.meter_id, "customer": customer.external_id, "value": value},
            )
            assert response.status_code == 302, response.content[:500]

        record("6")
        record("6")  # 12 >= 10: fires
        wait_for(
            lambda: UsageAlertTrigger.objects.filter(
                delivery_status=UsageAlertTrigger.Delivery.DELIVERED
            ).exists()
        )
        record("6")  # more usage: evaluated again, but it fired already
        wait_for(
            lambda: "meters.usage_alerts_evaluate" in worker.log and _evaluations(worker) >= 3,
            worker=worker,
        )
        trigger = UsageAlertTrigger.objects.get()
        assert (trigger.alert, trigger.customer, trigger.value) == (alert, customer, Decimal(12))
        attempts = list(AlertDeliveryAttempt.objects.order_by("attempt"))
        assert [(a.attempt, a.status_code, a.succeeded) for a in attempts] == [
            (1, 503, False),
            (2, 200, True),
        ]
        assert len(receiver.received) == 2
        assert receiver.received[1].json["data"]["object"]["value"] == "12"


def _evaluations(worker) -> int:
    return worker.log.count("Task meters.usage_alerts_evaluate[") // 2  # received + succeeded
