"""Usage alerts: definition rules, one-time firing on the month's usage, and webhook delivery
to a real HTTP receiver (the delivery function called directly; the Celery path is in
test_alerts_worker.py)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from alerts.models import UsageAlert, UsageAlertTrigger
from alerts.services import (
    MAX_ALERTS_PER_METER_AND_CUSTOMER,
    alert_webhook_attempt,
    alert_webhook_backoff,
    usage_alert_create,
    usage_alert_status_set,
    usage_alerts_enqueue,
    usage_alerts_evaluate,
)
from events.ingestion import EventInput, event_batch_create, meter_events_ingest
from events.models import EventBatch
from meters.models import Meter
from tests.alerts.alert_receiver import webhook_receiver
from tests.factories import CustomerFactory, MeterFactory, UserFactory
from usage.rollups import usage_days_refresh_enqueue
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)


def send(meter, customer, *values, at=NOW - timedelta(hours=1), now=NOW, dry_run=False):
    batch = event_batch_create(source=EventBatch.Source.API, dry_run=dry_run)
    report = meter_events_ingest(
        events=[
            EventInput(
                event_name=meter.event_name,
                payload={"stripe_customer_id": customer.external_id, "value": str(value)},
                timestamp=at,
            )
            for value in values
        ],
        batch=batch,
        now=now,
    )
    assert report.rejected == 0
    return report


def evaluate(meter, *customers, now=NOW):
    return usage_alerts_evaluate(pairs=[(meter.pk, c.pk) for c in customers], now=now)


@pytest.fixture
def admin():
    return UserFactory(username="alert-admin")


@pytest.fixture
def meter():
    return MeterFactory()


@pytest.fixture
def customer():
    return CustomerFactory()


def test_fires_once_when_the_months_usage_reaches_the_threshold(admin, meter, customer):
    alert = usage_alert_create(actor=admin, title="Big spender", meter=meter, threshold=Decimal(10))
    send(meter, customer, 4)
    assert evaluate(meter, customer) == []
    send(meter, customer, "5.5")
    assert evaluate(meter, customer) == []  # 9.5 < 10
    send(meter, customer, "0.5")
    (trigger,) = evaluate(meter, customer)
    assert trigger.alert == alert
    assert trigger.value == Decimal("10.0")
    assert trigger.triggered_at == NOW
    assert trigger.period_start == datetime(2026, 3, 1, tzinfo=UTC)
    assert trigger.delivery_status == UsageAlertTrigger.Delivery.NONE
    # One time per customer, whatever the usage afterwards.
    send(meter, customer, 100)
    assert evaluate(meter, customer) == []
    assert evaluate(meter, customer, now=NOW + timedelta(days=20)) == []
    assert UsageAlertTrigger.objects.count() == 1


def test_usage_recorded_before_the_alert_existed_counts(admin, meter, customer):
    send(meter, customer, 25)
    alert = usage_alert_create(actor=admin, title="Over 20", meter=meter, threshold=Decimal(20))
    send(meter, customer, 1)  # the next usage report evaluates the whole month
    (trigger,) = evaluate(meter, customer)
    assert (trigger.alert, trigger.value) == (alert, Decimal(26))


def test_only_the_current_calendar_month_counts(admin, meter, customer):
    usage_alert_create(actor=admin, title="Month", meter=meter, threshold=Decimal(10))
    now = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)
    send(meter, customer, 9, at=datetime(2026, 3, 31, 23, 59, tzinfo=UTC), now=now)
    send(meter, customer, 2, at=datetime(2026, 4, 1, 0, 0, tzinfo=UTC), now=now)
    assert evaluate(meter, customer, now=now) == []  # 2 in April; March's 9 do not count
    send(meter, customer, 8, at=now - timedelta(minutes=5), now=now)
    (trigger,) = evaluate(meter, customer, now=now)
    assert trigger.value == Decimal(10)


def test_cancelled_usage_does_not_count(admin, meter, customer):
    from events.ingestion import event_batch_cancel

    usage_alert_create(actor=admin, title="Ten", meter=meter, threshold=Decimal(10))
    report = send(meter, customer, 8)
    send(meter, customer, 3)
    event_batch_cancel(batch=report.batch, user=admin)
    assert evaluate(meter, customer) == []  # 3 counted


def test_an_alert_for_one_customer_ignores_the_others(admin, meter, customer):
    other = CustomerFactory()
    usage_alert_create(
        actor=admin, title="Mine", meter=meter, threshold=Decimal(5), customer=customer
    )
    send(meter, other, 50)
    assert evaluate(meter, other) == []
    send(meter, customer, 5)
    (trigger,) = evaluate(meter, customer, other)
    assert trigger.customer == customer


def test_an_all_customers_alert_fires_for_each_customer_once(admin, meter, customer):
    other = CustomerFactory()
    alert = usage_alert_create(actor=admin, title="Any", meter=meter, threshold=Decimal(5))
    send(meter, customer, 6)
    send(meter, other, 7)
    triggers = evaluate(meter, customer, other)
    assert sorted((t.customer_id, t.value) for t in triggers) == [
        (customer.pk, Decimal(6)),
        (other.pk, Decimal(7)),
    ]
    assert evaluate(meter, customer, other) == []
    assert alert.triggers.count() == 2


def test_count_and_last_formulas(admin, customer):
    counter = MeterFactory(aggregation_formula=Meter.Formula.COUNT)
    seats = MeterFactory(aggregation_formula=Meter.Formula.LAST)
    usage_alert_create(actor=admin, title="3 calls", meter=counter, threshold=Decimal(3))
    usage_alert_create(actor=admin, title="10 seats", meter=seats, threshold=Decimal(10))
    send(counter, customer, 100, 100)
    assert evaluate(counter, customer) == []  # 2 events, whatever their values
    send(counter, customer, 1)
    assert [t.value for t in evaluate(counter, customer)] == [Decimal(3)]
    send(seats, customer, 50, at=NOW - timedelta(hours=3))
    send(seats, customer, 4, at=NOW - timedelta(hours=1))
    assert evaluate(seats, customer) == []  # the last value, 4, counts; not the 50 before it
    send(seats, customer, 12, at=NOW - timedelta(minutes=1))
    assert [t.value for t in evaluate(seats, customer)] == [Decimal(12)]


def test_inactive_and_archived_alerts_do_not_fire(admin, meter, customer):
    alert = usage_alert_create(actor=admin, title="Off", meter=meter, threshold=Decimal(1))
    usage_alert_status_set(alert=alert, actor=admin, status="inactive")
    send(meter, customer, 5)
    assert evaluate(meter, customer) == []
    usage_alert_status_set(alert=alert, actor=admin, status="active")
    assert len(evaluate(meter, customer)) == 1
    other = CustomerFactory()
    usage_alert_status_set(alert=alert, actor=admin, status="archived")
    send(meter, other, 5)
    assert evaluate(meter, other) == []
    with pytest.raises(ValidationError) as error:
        usage_alert_status_set(alert=alert, actor=admin, status="active")
    assert error.value.code == "invalid_transition"
    actions = list(
        AuditEntry.objects.filter(target_id=str(alert.pk), target_type="alerts.usagealert")
        .order_by("at", "id")
        .values_list("action", flat=True)
    )
    assert actions == ["create", "deactivate", "reactivate", "update"]


def test_at_most_25_alerts_per_meter_and_customer(admin, meter, customer):
    for number in range(MAX_ALERTS_PER_METER_AND_CUSTOMER - 1):
        usage_alert_create(
            actor=admin, title=f"a{number}", meter=meter, threshold=Decimal(number + 1)
        )
    usage_alert_create(
        actor=admin, title="mine", meter=meter, threshold=Decimal(1), customer=customer
    )  # 24 for everyone + 1 for this customer = 25 for this customer
    with pytest.raises(ValidationError) as error:
        usage_alert_create(
            actor=admin, title="one too many", meter=meter, threshold=Decimal(1), customer=customer
        )
    assert error.value.code == "alert_limit_reached"
    with pytest.raises(ValidationError):  # an all-customers alert would also make it 26
        usage_alert_create(actor=admin, title="all", meter=meter, threshold=Decimal(1))
    # Another customer has 24: room for one more of its own.
    usage_alert_create(
        actor=admin, title="theirs", meter=meter, threshold=Decimal(1), customer=CustomerFactory()
    )
    # Archiving frees a place.
    usage_alert_status_set(alert=UsageAlert.objects.get(title="a0"), actor=admin, status="archived")
    usage_alert_create(
        actor=admin, title="now it fits", meter=meter, threshold=Decimal(1), customer=customer
    )


def test_the_threshold_must_be_positive(admin, meter):
    with pytest.raises(ValidationError) as error:
        usage_alert_create(actor=admin, title="zero", meter=meter, threshold=Decimal(0))
    assert error.value.error_dict["threshold"][0].code == "invalid_threshold"


# --- Enqueueing after ingestion ---------------------------------------------------------------
def test_ingestion_schedules_evaluation_after_commit_and_not_for_dry_runs(
    admin, meter, customer, django_capture_on_commit_callbacks
):
    usage_alert_create(actor=admin, title="Any", meter=meter, threshold=Decimal(5))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        send(meter, customer, 1, dry_run=True)
    assert callbacks == []
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        send(meter, customer, 1)
    assert len(alert_callbacks(callbacks)) == 1
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        send(meter, customer, 1, at=NOW - timedelta(hours=7))
        report = send(meter, customer, 1, at=NOW - timedelta(hours=7))  # new identifiers
    assert report.accepted == 1 and len(alert_callbacks(callbacks)) == 2


def alert_callbacks(callbacks):
    """Ingestion also schedules the meter overview's daily-rollup refresh after commit."""
    return [c for c in callbacks if getattr(c, "func", c) is not usage_days_refresh_enqueue]


def test_enqueue_sends_nothing_when_no_alert_covers_the_pairs(admin, meter, customer):
    other_meter = MeterFactory()
    other_customer = CustomerFactory()
    assert usage_alerts_enqueue(pairs=[(meter.pk, customer.pk)]) == 0
    usage_alert_create(
        actor=admin, title="One", meter=meter, threshold=Decimal(5), customer=customer
    )
    pairs = [(meter.pk, customer.pk), (meter.pk, other_customer.pk), (other_meter.pk, customer.pk)]
    assert usage_alerts_enqueue(pairs=pairs) == 1


# --- Webhook delivery -------------------------------------------------------------------------
def _fired_with_webhook(admin, meter, customer, url):
    alert = usage_alert_create(
        actor=admin, title="Hook", meter=meter, threshold=Decimal(5), webhook_url=url
    )
    send(meter, customer, 7)
    (trigger,) = evaluate(meter, customer)
    assert trigger.delivery_status == UsageAlertTrigger.Delivery.PENDING
    return alert, trigger


def test_webhook_is_posted_signed_and_failures_are_logged_until_delivered(admin, meter, customer):
    with webhook_receiver(statuses=[500, 503]) as receiver:
        alert, trigger = _fired_with_webhook(admin, meter, customer, receiver.url)
        first = alert_webhook_attempt(trigger_id=trigger.pk)
        second = alert_webhook_attempt(trigger_id=trigger.pk)
        third = alert_webhook_attempt(trigger_id=trigger.pk)
        assert alert_webhook_attempt(trigger_id=trigger.pk) is None  # delivered: done
    assert [(a.attempt, a.status_code, a.succeeded) for a in (first, second, third)] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert first.error == "HTTP 500 Internal Server Error"
    assert first.response_excerpt == "receiver is down"
    trigger.refresh_from_db()
    assert trigger.delivery_status == UsageAlertTrigger.Delivery.DELIVERED
    assert trigger.attempts.count() == 3
    assert len(receiver.received) == 3
    request = receiver.received[-1]
    assert request.path == "/hooks/usage"
    assert request.headers["Content-Type"] == "application/json"
    event = request.json
    assert event["type"] == "billing.alert.triggered"
    assert event["id"] == receiver.received[0].json["id"]  # stable across retries
    triggered = event["data"]["object"]
    assert triggered["object"] == "billing.alert_triggered"
    assert triggered["customer"] == customer.external_id
    assert triggered["value"] == "7"
    assert triggered["alert"]["id"] == alert.alert_id
    assert triggered["alert"]["usage_threshold"] == {
        "filters": [],
        "gte": "5",
        "meter": meter.meter_id,
        "recurrence": "one_time",
    }
    timestamp, signature = (
        part.split("=", 1)[1] for part in request.headers["Usage-Portal-Signature"].split(",")
    )
    expected = hmac.new(
        alert.webhook_secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(signature, expected)


def test_delivery_gives_up_after_the_last_attempt(admin, meter, customer, settings):
    settings.USAGE_ALERT_WEBHOOK_MAX_ATTEMPTS = 2
    with webhook_receiver(statuses=[500, 500, 500]) as receiver:
        _, trigger = _fired_with_webhook(admin, meter, customer, receiver.url)
        alert_webhook_attempt(trigger_id=trigger.pk)
        alert_webhook_attempt(trigger_id=trigger.pk)
        assert alert_webhook_attempt(trigger_id=trigger.pk) is None
    trigger.refresh_from_db()
    assert trigger.delivery_status == UsageAlertTrigger.Delivery.FAILED
    assert len(receiver.received) == 2


def test_an_unreachable_receiver_is_a_logged_failed_attempt(admin, meter, customer):
    with webhook_receiver() as receiver:
        url = receiver.url
    # The server is shut down: nothing listens on that port any more.
    _, trigger = _fired_with_webhook(admin, meter, customer, url)
    attempt = alert_webhook_attempt(trigger_id=trigger.pk)
    assert attempt is not None
    assert not attempt.succeeded
    assert attempt.status_code is None
    assert "Connection" in attempt.error or "refused" in attempt.error.lower()


def test_redirects_are_not_followed(admin, meter, customer):
    with webhook_receiver(statuses=[302]) as receiver:
        _, trigger = _fired_with_webhook(admin, meter, customer, receiver.url)
        attempt = alert_webhook_attempt(trigger_id=trigger.pk)
    assert (attempt.status_code, attempt.succeeded) == (302, False)


def test_backoff_doubles_and_is_capped(settings):
    settings.USAGE_ALERT_WEBHOOK_BACKOFF_SECONDS = 30
    assert [alert_webhook_backoff(n) for n in (1, 2, 3)] == [30, 60, 120]
    assert alert_webhook_backoff(20) == 3600
