"""Usage alerts: Stripe's ``billing.alert`` of type ``usage_threshold`` (reference section 8.1).

An admin puts a threshold on a meter, for one customer or for all. The alert fires one time per
customer, the first time the customer's aggregated usage (the meter's formula) over the current
calendar month (UTC) reaches the threshold, and never again for that customer, whatever its
usage later. Like Stripe, alerts are evaluated when usage is reported after they exist, and the
evaluation counts all the month's usage, including usage reported before the alert was made.

HOW EVALUATION IS WIRED. The ingestion core (``events/ingestion/``) announces the (meter,
customer) pairs of the events it accepted (``events.signals.usage_changed``, once per
transaction); ``alerts/apps.py`` subscribes with ``usage_alerts_schedule``. After the
transaction commits, ``usage_alerts_enqueue`` sends ``meters.usage_alerts_evaluate`` to Celery,
only for pairs an active alert could still fire for (one indexed query; no message at all when
the meter has no alert). Every path -- manual entry, CSV, API, S3 -- goes through the core, so
every path is covered. A lost message heals itself: the next usage of that customer evaluates
the whole month again.

Firing is idempotent: the unique (alert, customer) constraint lets exactly one trigger exist,
even when two workers evaluate the same customer at once.

WEBHOOKS. A trigger of an alert with a webhook URL is POSTed as JSON (Stripe's event shape,
type ``billing.alert.triggered``) by ``meters.alert_webhook_deliver``. Any 2xx is delivered;
anything else (other status, timeout, refused connection; redirects are not followed) is a
failed attempt, logged as an ``AlertDeliveryAttempt``, and retried with exponential backoff
(``USAGE_ALERT_WEBHOOK_BACKOFF_SECONDS`` x 2^(attempt-1), capped at one hour) up to
``USAGE_ALERT_WEBHOOK_MAX_ATTEMPTS`` attempts; then the trigger's delivery is "failed". The
body is signed like Stripe's: header ``Usage-Portal-Signature: t=<unix time>,v1=<hex
HMAC-SHA256 of "<t>.<body>" with the alert's webhook secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from alerts.models import AlertDeliveryAttempt, UsageAlert, UsageAlertTrigger
from customers.models import Customer
from meters.models import Meter
from usage.selectors import calendar_month, customers_month_usage
from usage_portal.audit import audit_record
from usage_portal.models import AuditEntry

logger = logging.getLogger(__name__)

# Stripe: "a maximum of 25 alerts for each combination of a specific meter and customer".
MAX_ALERTS_PER_METER_AND_CUSTOMER = 25
RESPONSE_EXCERPT_CHARS = 500
Pair = tuple[int, int]  # (meter pk, customer pk)


# --- Definition ------------------------------------------------------------------------------
def _alerts_counting_towards_limit(meter: Meter) -> Any:
    return UsageAlert.objects.filter(meter=meter).exclude(status=UsageAlert.Status.ARCHIVED)


def alert_count_for(*, meter: Meter, customer: Customer | None) -> int:
    """How many live (not archived) alerts cover (meter, customer); for ``customer=None``, the
    most any one customer has (an all-customers alert covers every customer)."""
    alerts = _alerts_counting_towards_limit(meter)
    for_all = alerts.filter(customer__isnull=True).count()
    if customer is not None:
        return for_all + alerts.filter(customer=customer).count()
    busiest = (
        alerts.filter(customer__isnull=False)
        .values("customer")
        .annotate(n=Count("id"))
        .order_by("-n")
        .values_list("n", flat=True)
        .first()
    )
    return for_all + (busiest or 0)


@transaction.atomic
def usage_alert_create(
    *,
    actor: User | None,
    title: str,
    meter: Meter,
    threshold: Decimal,
    customer: Customer | None = None,
    webhook_url: str = "",
) -> UsageAlert:
    """Create an active one-time usage alert (Stripe: ``POST /v1/billing/alerts``)."""
    # Serialise creations on the meter so that two admins cannot both take the 25th place.
    Meter.objects.select_for_update().filter(pk=meter.pk).first()
    if threshold <= 0:
        raise ValidationError(
            {
                "threshold": ValidationError(
                    "The threshold must be greater than 0.", code="invalid_threshold"
                )
            }
        )
    if alert_count_for(meter=meter, customer=customer) >= MAX_ALERTS_PER_METER_AND_CUSTOMER:
        who = customer.external_id if customer else "a customer"
        raise ValidationError(
            f"{who} already has {MAX_ALERTS_PER_METER_AND_CUSTOMER} alerts on meter "
            f"{meter.display_name}, the most allowed. Archive one first.",
            code="alert_limit_reached",
        )
    alert = UsageAlert(
        title=title.strip(),
        meter=meter,
        customer=customer,
        threshold=threshold,
        webhook_url=webhook_url.strip(),
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    alert.full_clean()
    alert.save()
    audit_record(
        target=alert,
        action=AuditEntry.Action.CREATE,
        actor=actor,
        changes={
            "title": [None, alert.title],
            "meter": [None, meter.meter_id],
            "customer": [None, customer.external_id if customer else "all customers"],
            "threshold": [None, threshold],
            "webhook_url": [None, alert.webhook_url],
        },
    )
    return alert


_TRANSITIONS = {
    UsageAlert.Status.ACTIVE: {UsageAlert.Status.INACTIVE, UsageAlert.Status.ARCHIVED},
    UsageAlert.Status.INACTIVE: {UsageAlert.Status.ACTIVE, UsageAlert.Status.ARCHIVED},
    UsageAlert.Status.ARCHIVED: set(),
}
_ACTIONS = {
    UsageAlert.Status.ACTIVE: AuditEntry.Action.REACTIVATE,
    UsageAlert.Status.INACTIVE: AuditEntry.Action.DEACTIVATE,
    UsageAlert.Status.ARCHIVED: AuditEntry.Action.UPDATE,
}


@transaction.atomic
def usage_alert_status_set(*, alert: UsageAlert, actor: User | None, status: str) -> UsageAlert:
    """Activate, deactivate or archive an alert (Stripe's activate/deactivate/archive).
    Archiving is final and frees the alert's place in the limit of 25."""
    alert = UsageAlert.objects.select_for_update().get(pk=alert.pk)
    if status not in UsageAlert.Status.values:
        raise ValidationError(f"Unknown alert status {status!r}.", code="invalid_status")
    new = UsageAlert.Status(status)
    old = UsageAlert.Status(alert.status)
    if new not in _TRANSITIONS[old]:
        raise ValidationError(
            f"An {old.label.lower()} alert cannot become {new.label.lower()}.",
            code="invalid_transition",
        )
    if new == UsageAlert.Status.ACTIVE and (
        alert_count_for(meter=alert.meter, customer=alert.customer)
        > MAX_ALERTS_PER_METER_AND_CUSTOMER
    ):  # pragma: no cover - inactive alerts count towards the limit, so this cannot happen
        raise ValidationError("Too many alerts.", code="alert_limit_reached")
    alert.status = new
    alert.save(update_fields=["status", "updated"])
    audit_record(target=alert, action=_ACTIONS[new], actor=actor, changes={"status": [old, new]})
    return alert


# --- Evaluation ------------------------------------------------------------------------------
def usage_alerts_schedule(*, pairs: Iterable[Pair]) -> None:
    """Called by the ingestion core inside its transaction: evaluate alerts for ``pairs``
    once (and only if) the transaction commits."""
    frozen = frozenset(pairs)
    if frozen:
        transaction.on_commit(lambda: usage_alerts_enqueue(pairs=frozen), robust=True)


def _pairs_with_candidates(pairs: Iterable[Pair]) -> list[Pair]:
    pairs = set(pairs)
    meter_ids = {meter_id for meter_id, _ in pairs}
    alerts = list(
        UsageAlert.objects.filter(
            meter_id__in=meter_ids, status=UsageAlert.Status.ACTIVE
        ).values_list("meter_id", "customer_id")
    )
    every_customer = {meter_id for meter_id, customer_id in alerts if customer_id is None}
    one_customer = {(m, c) for m, c in alerts if c is not None}
    return sorted(p for p in pairs if p[0] in every_customer or p in one_customer)


def usage_alerts_enqueue(*, pairs: Iterable[Pair]) -> int:
    """Send the evaluation task for the pairs an active alert covers; return how many."""
    wanted = _pairs_with_candidates(pairs)
    if wanted:
        from alerts.tasks import usage_alerts_evaluate_task

        usage_alerts_evaluate_task.delay([list(pair) for pair in wanted])
    return len(wanted)


def usage_alerts_evaluate(
    *, pairs: Iterable[Pair], now: datetime | None = None
) -> list[UsageAlertTrigger]:
    """Fire every active alert whose threshold one of the ``pairs``' customers has reached
    this calendar month and that has not fired for that customer yet. Returns the new
    triggers. Safe to run twice or concurrently."""
    now = (now or timezone.now()).astimezone(UTC)
    period_start, _ = calendar_month(now)
    customers_by_meter: dict[int, set[int]] = defaultdict(set)
    for meter_id, customer_id in pairs:
        customers_by_meter[meter_id].add(customer_id)
    alerts = list(
        UsageAlert.objects.filter(
            meter_id__in=customers_by_meter, status=UsageAlert.Status.ACTIVE
        ).select_related("meter")
    )
    fired = set(
        UsageAlertTrigger.objects.filter(alert__in=alerts).values_list("alert_id", "customer_id")
    )
    created: list[UsageAlertTrigger] = []
    for meter_id, customer_ids in sorted(customers_by_meter.items()):
        meter_alerts = sorted(
            (a for a in alerts if a.meter_id == meter_id), key=lambda a: (a.threshold, a.pk)
        )
        pending = {
            customer_id: [
                alert
                for alert in meter_alerts
                if alert.customer_id in (None, customer_id) and (alert.pk, customer_id) not in fired
            ]
            for customer_id in customer_ids
        }
        pending = {customer_id: todo for customer_id, todo in pending.items() if todo}
        if not pending:
            continue
        usage = customers_month_usage(
            meter=meter_alerts[0].meter, customer_ids=list(pending), now=now
        )
        for customer_id in sorted(pending):
            for alert in pending[customer_id]:
                if usage[customer_id] >= alert.threshold:
                    trigger = _trigger_create(
                        alert=alert,
                        customer_id=customer_id,
                        value=usage[customer_id],
                        period_start=period_start,
                        now=now,
                    )
                    if trigger is not None:
                        created.append(trigger)
    return created


def _trigger_create(
    *,
    alert: UsageAlert,
    customer_id: int,
    value: Decimal,
    period_start: datetime,
    now: datetime,
) -> UsageAlertTrigger | None:
    try:
        with transaction.atomic():
            trigger = UsageAlertTrigger.objects.create(
                alert=alert,
                customer_id=customer_id,
                value=value,
                period_start=period_start,
                triggered_at=now,
                delivery_status=(
                    UsageAlertTrigger.Delivery.PENDING
                    if alert.webhook_url
                    else UsageAlertTrigger.Delivery.NONE
                ),
            )
    except IntegrityError:
        return None  # another evaluation fired it first: one time per customer
    logger.info("Usage alert %s fired for customer %s at %s", alert.alert_id, customer_id, value)
    if alert.webhook_url:
        transaction.on_commit(lambda: alert_webhook_enqueue(trigger=trigger), robust=True)
    return trigger


# --- Webhook delivery ------------------------------------------------------------------------
def alert_webhook_enqueue(*, trigger: UsageAlertTrigger, countdown: float | None = None) -> None:
    from alerts.tasks import alert_webhook_deliver_task

    alert_webhook_deliver_task.apply_async(args=[trigger.pk], countdown=countdown)


def alert_webhook_payload(*, trigger: UsageAlertTrigger) -> dict[str, Any]:
    """Stripe's ``billing.alert.triggered`` event for ``trigger``. The id is stable, so a
    receiver can drop the repeats that retries may bring."""
    alert = trigger.alert
    created = int(trigger.triggered_at.timestamp())
    return {
        "id": f"evt_alert_trigger_{trigger.pk}",
        "object": "event",
        "type": "billing.alert.triggered",
        "created": created,
        "data": {
            "object": {
                "object": "billing.alert_triggered",
                "alert": {
                    "id": alert.alert_id,
                    "object": "billing.alert",
                    "alert_type": "usage_threshold",
                    "status": alert.status,
                    "title": alert.title,
                    "usage_threshold": {
                        "filters": (
                            [{"type": "customer", "customer": alert.customer.external_id}]
                            if alert.customer
                            else []
                        ),
                        "gte": str(alert.threshold),
                        "meter": alert.meter.meter_id,
                        "recurrence": "one_time",
                    },
                },
                "created": created,
                "customer": trigger.customer.external_id,
                "value": str(trigger.value),
                "period_start": int(trigger.period_start.timestamp()),
            }
        },
    }


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is a failed delivery, as on Stripe


_opener = urllib.request.build_opener(_NoRedirects)


def alert_webhook_backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    base = settings.USAGE_ALERT_WEBHOOK_BACKOFF_SECONDS
    return float(min(base * 2 ** (attempt - 1), 3600.0))


def alert_webhook_attempt(*, trigger_id: int) -> AlertDeliveryAttempt | None:
    """POST the trigger to its alert's webhook once and log the attempt on it. None when
    there is nothing to do (already delivered or failed for good, or no webhook)."""
    with transaction.atomic():
        trigger = (
            UsageAlertTrigger.objects.select_for_update(of=("self",))
            .select_related("alert__meter", "alert__customer", "customer")
            .get(pk=trigger_id)
        )
        if trigger.delivery_status != UsageAlertTrigger.Delivery.PENDING:
            return None
        url = trigger.alert.webhook_url
        number = trigger.attempts.count() + 1
    body = json.dumps(alert_webhook_payload(trigger=trigger), separators=(",", ":")).encode()
    sent_at = timezone.now()
    signature = webhook_signature(
        secret=trigger.alert.webhook_secret, timestamp=int(sent_at.timestamp()), body=body
    )
    request = urllib.request.Request(  # noqa: S310 - URLField admits only http(s)
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "UsagePortal-Webhooks/1.0",
            "Usage-Portal-Signature": signature,
            "Usage-Portal-Delivery-Attempt": str(number),
        },
    )
    status_code: int | None = None
    excerpt = ""
    error = ""
    started = time.monotonic()
    try:
        with _opener.open(request, timeout=settings.USAGE_ALERT_WEBHOOK_TIMEOUT_SECONDS) as reply:
            status_code = reply.status
            excerpt = reply.read(RESPONSE_EXCERPT_CHARS).decode(errors="replace")
    except urllib.error.HTTPError as failure:
        status_code = failure.code
        excerpt = failure.read(RESPONSE_EXCERPT_CHARS).decode(errors="replace")
        error = f"HTTP {failure.code} {failure.reason}"
    except (urllib.error.URLError, OSError) as failure:
        reason = getattr(failure, "reason", failure)
        error = f"{type(reason).__name__}: {reason}"
    duration_ms = int((time.monotonic() - started) * 1000)
    succeeded = status_code is not None and 200 <= status_code < 300
    with transaction.atomic():
        trigger = UsageAlertTrigger.objects.select_for_update().get(pk=trigger_id)
        attempt = AlertDeliveryAttempt.objects.create(
            trigger=trigger,
            attempt=number,
            at=sent_at,
            url=url,
            status_code=status_code,
            succeeded=succeeded,
            error=error[:2000],
            response_excerpt=excerpt,
            duration_ms=duration_ms,
        )
        if succeeded:
            trigger.delivery_status = UsageAlertTrigger.Delivery.DELIVERED
            trigger.delivered_at = timezone.now()
        elif number >= settings.USAGE_ALERT_WEBHOOK_MAX_ATTEMPTS:
            trigger.delivery_status = UsageAlertTrigger.Delivery.FAILED
        trigger.save(update_fields=["delivery_status", "delivered_at"])
    log = logger.info if succeeded else logger.warning
    log("Webhook attempt %s for trigger %s: %s", number, trigger_id, status_code or error)
    return attempt
