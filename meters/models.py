"""Meter definitions: what an event name is counted as (Stripe's ``billing.meter``)."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse

from usage_portal.ids import random_public_id


def new_meter_id() -> str:
    return random_public_id("mtr_")


event_name_validator = RegexValidator(
    r"^[A-Za-z0-9_.\-]+$",
    "Use only letters, digits, underscores, hyphens and dots.",
    code="invalid_event_name",
)


class Meter(models.Model):
    class Formula(models.TextChoices):
        SUM = "sum", "Sum"
        COUNT = "count", "Count"
        LAST = "last", "Last"

    class TimeWindow(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        INACTIVE = "inactive", "Inactive"

    # Internal integer key keeps the events table compact; `meter_id` is Stripe's `mtr_` id.
    meter_id = models.CharField("ID", max_length=40, default=new_meter_id, editable=False)
    display_name = models.CharField(max_length=250)
    event_name = models.CharField(max_length=100, validators=[event_name_validator])
    aggregation_formula = models.CharField(
        max_length=5, choices=Formula.choices, default=Formula.SUM
    )
    customer_mapping_key = models.CharField(max_length=100, default="stripe_customer_id")
    value_settings_key = models.CharField(max_length=100, default="value")
    event_time_window = models.CharField(
        max_length=4, choices=TimeWindow.choices, blank=True, default=""
    )
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["display_name"]
        constraints = [
            models.UniqueConstraint(fields=["meter_id"], name="meter_unique_meter_id"),
            models.UniqueConstraint(fields=["event_name"], name="meter_unique_event_name"),
            models.CheckConstraint(
                condition=Q(aggregation_formula__in=["sum", "count", "last"]),
                name="meter_formula_valid",
            ),
            models.CheckConstraint(
                condition=Q(status="active", deactivated_at__isnull=True)
                | Q(status="inactive", deactivated_at__isnull=False),
                name="meter_deactivated_at_matches_status",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.event_name})"

    def get_absolute_url(self) -> str:
        return reverse("meters:meter_detail", kwargs={"meter_id": self.meter_id})

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE
