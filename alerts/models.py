"""Usage alerts (Stripe's ``billing.alert`` of type ``usage_threshold``), their triggers and
webhook delivery attempts. Tables keep the names they had in ``meters``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from customers.models import Customer
from meters.models import Meter
from usage_portal.fields import ExactDecimalField
from usage_portal.ids import random_public_id


def new_alert_id() -> str:
    return random_public_id("alrt_")


def new_webhook_secret() -> str:
    return random_public_id("whsec_", 32)


class UsageAlert(models.Model):
    """A usage threshold on a meter, for one customer or for every customer.

    One-time per customer, like Stripe's ``recurrence=one_time``: it fires the first time a
    customer's aggregated usage in the current calendar month (UTC) reaches ``threshold``,
    and never again for that customer. Evaluated as usage is ingested.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        INACTIVE = "inactive", "Inactive"
        ARCHIVED = "archived", "Archived"

    alert_id = models.CharField("ID", max_length=40, default=new_alert_id, editable=False)
    title = models.CharField(max_length=256)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="alerts")
    # None: every customer (Stripe: no filter).
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="alerts"
    )
    threshold = ExactDecimalField()  # Stripe's usage_threshold.gte
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    webhook_url = models.URLField(max_length=2000, blank=True)
    # Signs the webhook body (HMAC-SHA256), so the receiver can check where it came from.
    webhook_secret = models.CharField(max_length=80, default=new_webhook_secret, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "meters_usagealert"
        ordering = ["-created", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["alert_id"], name="usagealert_unique_alert_id"),
            models.CheckConstraint(
                condition=Q(status__in=["active", "inactive", "archived"]),
                name="usagealert_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["meter", "status"], name="usagealert_meter_status")]

    def __str__(self) -> str:
        return f"{self.title} ({self.alert_id})"

    def get_absolute_url(self) -> str:
        return reverse("alerts:alert_detail", kwargs={"pk": self.pk})


class UsageAlertTrigger(models.Model):
    """Stripe's ``billing.alert_triggered``: an alert fired for one customer, once ever."""

    class Delivery(models.TextChoices):
        NONE = "none", "No webhook"
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    alert = models.ForeignKey(UsageAlert, on_delete=models.PROTECT, related_name="triggers")
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="alert_triggers", db_index=False
    )
    # The customer's aggregated usage of the month when the alert fired.
    value = ExactDecimalField()
    period_start = models.DateTimeField()  # the calendar month (UTC) that was evaluated
    triggered_at = models.DateTimeField()
    delivery_status = models.CharField(max_length=9, choices=Delivery.choices)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "meters_usagealerttrigger"
        ordering = ["-triggered_at", "-id"]
        constraints = [
            # One-time recurrence: at most once per (alert, customer), even under races.
            models.UniqueConstraint(
                fields=["alert", "customer"], name="alerttrigger_unique_alert_customer"
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "-triggered_at"], name="alerttrigger_customer"),
            models.Index(fields=["-triggered_at"], name="alerttrigger_triggered_at"),
        ]

    def __str__(self) -> str:
        return f"{self.alert.alert_id} fired for customer {self.customer_id} at {self.value}"


class AlertDeliveryAttempt(models.Model):
    """One POST of a trigger to its alert's webhook URL, successful or not."""

    trigger = models.ForeignKey(
        UsageAlertTrigger, on_delete=models.CASCADE, related_name="attempts", db_index=False
    )
    attempt = models.PositiveIntegerField()
    at = models.DateTimeField()
    url = models.URLField(max_length=2000)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    succeeded = models.BooleanField()
    error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField()

    class Meta:
        db_table = "meters_alertdeliveryattempt"
        ordering = ["trigger", "attempt"]
        constraints = [
            models.UniqueConstraint(
                fields=["trigger", "attempt"], name="alertattempt_unique_trigger_attempt"
            ),
        ]

    def __str__(self) -> str:
        outcome = self.status_code or self.error[:40]
        return f"attempt {self.attempt} of trigger {self.trigger_id}: {outcome}"
