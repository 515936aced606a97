"""The write side: batches, meter events, rejections, identifier sets and hourly rollups.

Events and rollups are written only by the ingestion core (``events/ingestion/``); usage is
read only through the selectors of ``usage``. Tables keep the names they had in ``meters``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from customers.models import Customer
from meters.models import Meter
from usage_portal.fields import ExactDecimalField


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
        db_table = "meters_eventbatch"
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
    # index costs less to fill without locale-aware comparisons. A valid identifier has at
    # most 100 characters (``rules.MAX_IDENTIFIER_LENGTH``); the 101-character ones are the
    # placeholders of released identifiers (``dedup.RELEASED_IDENTIFIER``), which no event
    # sent can equal.
    identifier = models.CharField(max_length=101, db_collation="BINARY")
    # The identifier an event was sent with, once a revert released it (then ``identifier``
    # holds the placeholder): pages show this one. NULL for every other event.
    # NULL, not "": adding a nullable column is instant on SQLite (with a default, Django
    # rebuilds the table), and the partial index below holds released events only.
    released_identifier = models.CharField(  # noqa: DJ001
        max_length=100, null=True, blank=True, db_collation="BINARY"
    )
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
        db_table = "meters_meterevent"
        constraints = [
            # A constraint, not unique=True: no redundant `_like` index on PostgreSQL.
            models.UniqueConstraint(fields=["identifier"], name="meterevent_unique_identifier"),
        ]
        indexes = [
            models.Index(fields=["meter", "customer", "timestamp"], name="event_meter_cust_ts"),
            # Only released events have an entry: the duplicates table finds the twin a
            # revert released, without an index entry per ordinary event.
            models.Index(
                fields=["released_identifier"],
                name="event_released_identifier",
                condition=models.Q(released_identifier__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.shown_identifier

    @property
    def shown_identifier(self) -> str:
        """The identifier as it was sent, also after a revert released it."""
        return self.released_identifier or self.identifier

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
        db_table = "meters_usagerollup"
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


class StoredIdentifierSet(models.Model):
    """A set of content-derived event identifiers that are all stored, with the content they
    were derived from: a fingerprint of one chunk of a file (see ``meter_events_ingest_columns``).

    Recorded when every event of the chunk that passed validation was stored or found stored
    with the same content. A derived identifier names its content and is freed only by a
    revert, which deletes every set (``event_batch_cancel``), so when the same events come
    again (the same file uploaded twice, an S3 file delivered twice) every one is a
    duplicate, known without looking up each identifier; and when the set held every row of
    the chunk, without validating each row again either.

    For identifiers the source gave (which name no content), the set is of each identifier
    with its event's content (``content_set_digest``), recorded for chunks with no identifier
    repeated: the same events sent again match it; a chunk with any content changed does not,
    and takes the full way, its conflicts reported.
    """

    digest = models.CharField(max_length=64)  # BLAKE2b of the identifiers in order, hex
    events = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "meters_storedidentifierset"
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
        db_table = "meters_eventrejection"
        indexes = [
            models.Index(fields=["batch", "line"], name="rejection_batch_line"),
            models.Index(fields=["meter", "created"], name="rejection_meter_created"),
        ]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
