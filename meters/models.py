"""Meters, customers, meter events and their hourly rollups.

Events and rollups are written only by the ingestion core (``meters/ingestion.py``); usage
is read only through ``meters/selectors.py``.
"""

from __future__ import annotations

import secrets
import string

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse

from meters.fields import ExactDecimalField

_ID_ALPHABET = string.ascii_letters + string.digits


def random_public_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


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


class Customer(models.Model):
    # The external ID that appears in usage payloads, such as `cus_...`.
    external_id = models.CharField("ID", max_length=255)
    name = models.CharField(max_length=255, blank=True)
    email = models.EmailField(max_length=254, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["external_id"]
        constraints = [
            models.UniqueConstraint(fields=["external_id"], name="customer_unique_external_id"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})" if self.name else self.external_id

    def get_absolute_url(self) -> str:
        return reverse("meters:customer_detail", kwargs={"pk": self.pk})


class AuditEntry(models.Model):
    """Who did what to which object, and what changed. Never edited."""

    class Action(models.TextChoices):
        CREATE = "create", "Created"
        UPDATE = "update", "Changed"
        DEACTIVATE = "deactivate", "Deactivated"
        REACTIVATE = "reactivate", "Reactivated"
        IMPORT = "import", "Imported"
        UPLOAD = "upload", "Uploaded"
        CANCEL = "cancel", "Cancelled"
        REVERT = "revert", "Reverted"

    target_type = models.CharField(max_length=40)
    target_id = models.CharField(max_length=255)
    action = models.CharField(max_length=20, choices=Action.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    at = models.DateTimeField(auto_now_add=True)
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["target_type", "target_id", "-at"], name="audit_target")]

    def __str__(self) -> str:
        return f"{self.target_type}:{self.target_id} {self.action} by {self.actor} at {self.at}"


class EventBatch(models.Model):
    """One call into the ingestion core: a manual entry, an upload, an API request or an
    S3 file. Every event links to the batch it arrived in, which gives its provenance."""

    class Source(models.TextChoices):
        MANUAL = "manual", "Manual entry"
        CSV = "csv", "CSV upload"
        API = "api", "API"
        S3 = "s3", "S3 import"

    source = models.CharField(max_length=6, choices=Source.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    # Validate-only runs write no events; their rejections are kept for the error file.
    dry_run = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "event batches"

    def __str__(self) -> str:
        return f"{self.get_source_display()} batch {self.pk}"


# HOT_PATH_FK. Events and hourly rollups carry no database FOREIGN KEY constraints to
# meters, customers and batches. PostgreSQL checks a foreign key with one trigger query per
# inserted row; on a CSV import that was five queries per event (three on the event, two on
# its new rollup row), measured at 18.5 s of every million rows, more than the inserts
# themselves. Integrity holds without them: only the ingestion core writes these rows, and
# it takes every meter and customer id from the database in the same transaction, locking
# them FOR KEY SHARE (one statement per batch) exactly as a foreign key check would; meters,
# customers and batches are never deleted (no view or admin action deletes them, and Django
# still enforces on_delete=PROTECT for any ORM delete).
class MeterEvent(models.Model):
    """One usage event. Immutable but for cancellation and supersession."""

    # Compared byte by byte ("BINARY": SQLite's own, on PostgreSQL a copy of "C" made by
    # migration 0008): an identifier is a key, not text to sort for people, and the unique
    # index costs less to fill without locale-aware comparisons.
    identifier = models.CharField(max_length=100, db_collation="BINARY")
    # No single-column FK indexes: the composite index below serves them, and every index
    # costs time on bulk inserts. No database FOREIGN KEY constraints either (HOT_PATH_FK):
    meter = models.ForeignKey(
        Meter,
        on_delete=models.PROTECT,
        related_name="events",
        db_index=False,
        db_constraint=False,
    )
    customer = models.ForeignKey(
        Customer,
        on_delete=models.PROTECT,
        related_name="events",
        db_index=False,
        db_constraint=False,
    )
    timestamp = models.DateTimeField()
    value = ExactDecimalField()
    payload = models.JSONField(default=dict)
    # Its index is made by migration 0008: BRIN on PostgreSQL (events arrive batch after
    # batch, so a few bytes per range of pages do; a B-tree cost 0.8 s per million events
    # inserted), a B-tree on SQLite, which has no BRIN.
    batch = models.ForeignKey(
        EventBatch,
        on_delete=models.PROTECT,
        related_name="events",
        db_constraint=False,
        db_index=False,
    )
    # The line of the source file the event came from, for CSV and S3.
    line = models.PositiveIntegerField(null=True, blank=True)
    received_at = models.DateTimeField()
    # For meters with an event_time_window, only the most recently received event of a
    # (customer, window) counts; the ones it replaced are superseded.
    superseded = models.BooleanField(default=False)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )

    class Meta:
        constraints = [
            # A constraint, not unique=True: no redundant `_like` index on PostgreSQL.
            models.UniqueConstraint(fields=["identifier"], name="meterevent_unique_identifier"),
        ]
        indexes = [
            models.Index(fields=["meter", "customer", "timestamp"], name="event_meter_cust_ts"),
        ]

    def __str__(self) -> str:
        return self.identifier

    @property
    def event_name(self) -> str:
        return self.meter.event_name

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled_at is not None


class UsageRollup(models.Model):
    """Counted usage per (meter, customer, UTC hour): what sum, count and last need.

    Written in the same transaction as the events it summarises. "Last" is the value of the
    counted event with the greatest (timestamp, id) in the hour.
    """

    # No database FOREIGN KEY constraints, like MeterEvent's (HOT_PATH_FK).
    meter = models.ForeignKey(
        Meter, on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False
    )
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False
    )
    hour = models.DateTimeField()
    value_sum = ExactDecimalField()
    event_count = models.BigIntegerField()
    last_value = ExactDecimalField(null=True)
    last_timestamp = models.DateTimeField(null=True)
    last_event_id = models.BigIntegerField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["meter", "customer", "hour"], name="rollup_unique_meter_customer_hour"
            ),
        ]
        # Meter-wide reads (the meter overview, its live feed): an hour range of one meter
        # across customers. One index entry per rollup row, not per event; meter and hour never
        # change, so rollup updates stay HOT-eligible. The customer pages need no
        # (customer, hour) index: the unique index serves meter = ANY(...) AND customer = ...
        indexes = [models.Index(fields=["meter", "hour"], name="rollup_meter_hour")]

    def __str__(self) -> str:
        return f"{self.meter_id}/{self.customer_id}@{self.hour:%Y-%m-%d %H}:00"


# --- Daily rollups: the meter overview's fast path, derived from UsageRollup off the ingestion
# hot path; written only by meters/day_rollups.py (its docstring explains the design).
class StaleUsageDay(models.Model):
    """A (meter, UTC day) whose hourly rollups changed after its daily rows were computed.

    Appended by ingestion and cancellation in their own transaction (one row per batch and
    key, never updated: no row for concurrent writers to queue on); deleted by the refresh
    that recomputes the day. While one exists, readers use the hourly rollups for that day.
    """

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+", db_index=False)
    day = models.DateField()

    class Meta:
        indexes = [models.Index(fields=["meter", "day"], name="staleday_meter_day")]

    def __str__(self) -> str:
        return f"{self.meter_id}@{self.day} (stale)"


class MeterDailyRollup(models.Model):
    """Counted usage per (meter, customer, UTC day): the day's hourly rollups combined."""

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+", db_index=False)
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    value_sum = ExactDecimalField()
    event_count = models.BigIntegerField()
    last_value = ExactDecimalField()
    last_timestamp = models.DateTimeField()
    last_event_id = models.BigIntegerField()

    class Meta:
        constraints = [
            # (meter, day) first: the overview reads a day range of one meter.
            models.UniqueConstraint(
                fields=["meter", "day", "customer"], name="dailyrollup_unique_meter_day_cust"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter_id}/{self.customer_id}@{self.day}"


class MeterMonthlyRollup(models.Model):
    """Counted usage per (meter, customer, UTC calendar month): its daily rollups combined,
    so long ranges read one row per customer-month."""

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+", db_index=False)
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    month = models.DateField()  # the first day of the month
    value_sum = ExactDecimalField()
    event_count = models.BigIntegerField()
    last_value = ExactDecimalField()
    last_timestamp = models.DateTimeField()
    last_event_id = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["meter", "month", "customer"], name="monthlyrollup_unique_meter_month_c"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter_id}/{self.customer_id}@{self.month:%Y-%m}"


class MeterUsageTotal(models.Model):
    """A meter's usage across customers in one UTC hour or day: the overview's chart."""

    class Grain(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+", db_index=False)
    grain = models.CharField(max_length=4, choices=Grain.choices)
    start = models.DateTimeField()
    value_sum = ExactDecimalField()
    event_count = models.BigIntegerField()
    # The sum of each customer's last value in the hour or day ("last" meters).
    last_sum = ExactDecimalField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["meter", "grain", "start"], name="usagetotal_unique_meter_grain_start"
            ),
            models.CheckConstraint(
                condition=Q(grain__in=["hour", "day"]), name="usagetotal_grain_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter_id} {self.grain} {self.start:%Y-%m-%d %H}:00"


class StoredIdentifierSet(models.Model):
    """A set of content-derived event identifiers that are all stored, with the content they
    were derived from: a fingerprint of one chunk of a file (see ``meter_events_ingest_columns``).

    Recorded when every event of the chunk that passed validation was stored or found stored
    with the same content. Identifiers are never freed and a derived identifier names its
    content, so when the same events come again (the same file uploaded twice, an S3 file
    delivered twice) every one is a duplicate, known without looking up each identifier; and
    when the set held every row of the chunk, without validating each row again either.
    """

    digest = models.CharField(max_length=64)  # BLAKE2b of the identifiers in order, hex
    events = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["digest"], name="storedidentifierset_unique_digest")
        ]

    def __str__(self) -> str:
        return f"{self.events} identifiers ({self.digest[:12]}…)"


class EventRejection(models.Model):
    """An event the core refused, kept so staff can see and fix it."""

    batch = models.ForeignKey(
        EventBatch, on_delete=models.CASCADE, related_name="rejections", db_index=False
    )
    line = models.PositiveIntegerField(null=True, blank=True)
    column = models.CharField(max_length=255, blank=True)
    code = models.CharField(max_length=64)
    message = models.TextField()
    identifier = models.CharField(max_length=255, blank=True)
    event_name = models.CharField(max_length=255, blank=True)
    meter = models.ForeignKey(
        Meter, null=True, blank=True, on_delete=models.SET_NULL, db_index=False
    )
    customer_ref = models.CharField(max_length=255, blank=True)
    # The event as it was received (for CSV, the original row's columns).
    raw = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["batch", "line"], name="rejection_batch_line"),
            models.Index(fields=["meter", "created"], name="rejection_meter_created"),
        ]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# === Usage alerts (Stripe's billing.alert of type usage_threshold) ==========================
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
        return reverse("meters:alert_detail", kwargs={"pk": self.pk})


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
        ordering = ["trigger", "attempt"]
        constraints = [
            models.UniqueConstraint(
                fields=["trigger", "attempt"], name="alertattempt_unique_trigger_attempt"
            ),
        ]

    def __str__(self) -> str:
        outcome = self.status_code or self.error[:40]
        return f"attempt {self.attempt} of trigger {self.trigger_id}: {outcome}"
