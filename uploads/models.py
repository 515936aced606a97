"""Usage files: the stored file, its processing state and its outcome; and the S3
connectors that find such files in a bucket.

An ``Upload`` owns one ``meters.EventBatch``; every event it brings in (and every row it
refuses, as an ``EventRejection``) hangs off that batch, so ``batch.upload`` leads back here.
A file a connector finds (``S3Object``) becomes an ``Upload`` once downloaded, so it gets
what a browser upload gets: chunked, resumable import, progress, the error file, revert.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cached_property

import numpy as np
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from events.models import EventBatch


class Upload(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        VALIDATING = "validating", "Validating"
        IMPORTING = "importing", "Importing"
        SUCCEEDED = "succeeded", "Succeeded"
        SUCCEEDED_WITH_ERRORS = "succeeded_with_errors", "Succeeded with errors"
        # Every row was a duplicate: a warning, not a success (nothing was counted).
        NOTHING_NEW = "nothing_new", "Nothing new"
        VALIDATED = "validated", "Validated"  # a validate-only run that read the whole file
        FAILED = "failed", "Failed"  # the file could not be read, or no row could be imported
        CANCELLED = "cancelled", "Cancelled"

    class RowsWithoutIdentifier(models.TextChoices):
        """What a file's rows without an identifier are (rows with one are counted once)."""

        NEW_USAGE = "new_usage", "new usage: count every row"
        CORRECTED_COPY = (
            "corrected_copy",
            "a corrected copy of an earlier file: don't count rows already imported",
        )

    class Format(models.TextChoices):
        """How the file's events are written (a browser upload is always CSV)."""

        CSV = "csv", "CSV"
        JSONL = "jsonl", "JSON lines"
        JSON = "json", "JSON array"

    ACTIVE_STATUSES = (Status.QUEUED, Status.VALIDATING, Status.IMPORTING)
    RUNNING_STATUSES = (Status.VALIDATING, Status.IMPORTING)
    FINISHED_STATUSES = (
        Status.SUCCEEDED,
        Status.SUCCEEDED_WITH_ERRORS,
        Status.NOTHING_NEW,
        Status.VALIDATED,
        Status.FAILED,
        Status.CANCELLED,
    )

    file = models.FileField(upload_to="uploads/%Y/%m/", max_length=255, blank=True)
    original_name = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    validate_only = models.BooleanField(default=False)
    file_format = models.CharField(max_length=8, choices=Format.choices, default=Format.CSV)
    # New usage: each such row gets an identifier of this upload and its line, so identical
    # rows all count (Stripe counts every event sent without an identifier). A corrected
    # copy: an identifier derived from the row's content and its rank among identical rows
    # (``uploads.rows``), so rows imported before are duplicates.
    rows_without_identifier = models.CharField(
        max_length=16,
        choices=RowsWithoutIdentifier.choices,
        default=RowsWithoutIdentifier.NEW_USAGE,
    )
    # A real import started from a finished validate-only run of the same stored file.
    validated_upload = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="imports"
    )
    batch = models.OneToOneField(EventBatch, on_delete=models.PROTECT, related_name="upload")

    status = models.CharField(max_length=24, choices=Status.choices, default=Status.QUEUED)
    failed_reason = models.TextField(blank=True)
    # The header row as read, so the error file repeats the original columns.
    header = models.JSONField(default=list, blank=True)
    rows_total = models.BigIntegerField(null=True, blank=True)  # known after validation
    rows_read = models.BigIntegerField(default=0)
    rows_imported = models.BigIntegerField(default=0)
    rows_duplicate = models.BigIntegerField(default=0)
    rows_failed = models.BigIntegerField(default=0)
    # Data records whose outcome is committed, and which: [start, end) ranges of record
    # positions, merged. Chunks commit in parallel, so the committed records need not be a
    # prefix of the file; a retried run skips exactly these.
    records_committed = models.BigIntegerField(default=0)
    committed_ranges = models.JSONField(default=list, blank=True)
    # {meter pk: {"events": int, "value": "decimal"}} of the rows imported (or, for a
    # validate-only run, the rows that would be).
    meter_totals = models.JSONField(default=dict, blank=True)

    queued_at = models.DateTimeField(null=True, blank=True)  # last handed to the broker
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When this run's import pass began, and the rows read before it (an earlier run's, or
    # those before a cancellation): the live rate and time left are this pass's, not
    # diluted by the validation pass or the pause before "Import the rest".
    import_started_at = models.DateTimeField(null=True, blank=True)
    import_start_rows = models.BigIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # The run that owns the job; a newer run takes over and the older one stops.
    run_token = models.CharField(max_length=32, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    # Revert runs in a worker (a large upload's cancellation outlasts a web request): the
    # request is recorded here, the outcome in the reverted_* fields.
    revert_requested_at = models.DateTimeField(null=True, blank=True)
    revert_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    reverted_at = models.DateTimeField(null=True, blank=True)
    reverted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    events_reverted = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["status", "queued_at"], name="upload_status_queued")]
        constraints = [
            models.CheckConstraint(
                condition=Q(rows_imported__gte=0)
                & Q(rows_duplicate__gte=0)
                & Q(rows_failed__gte=0)
                & Q(records_committed__gte=0),
                name="upload_counters_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(reverted_at__isnull=True) | Q(validate_only=False),
                name="upload_validate_only_never_reverted",
            ),
        ]

    def __str__(self) -> str:
        return f"Upload {self.pk}: {self.original_name}"

    def get_absolute_url(self) -> str:
        return reverse("uploads:upload_detail", kwargs={"upload_pk": self.pk})

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED_STATUSES

    @property
    def can_cancel(self) -> bool:
        return self.is_active and self.cancel_requested_at is None

    @property
    def can_import_rest(self) -> bool:
        """A cancelled import with rows not yet committed, which "Import the rest" brings in
        (into this upload), and not reverted or being reverted."""
        return (
            self.status == self.Status.CANCELLED
            and not self.validate_only
            and self.revert_requested_at is None
            and bool(self.file)
            and (self.rows_total is None or self.records_committed < self.rows_total)
        )

    @property
    def is_revertible(self) -> bool:
        """A finished import that brought in events and was not reverted yet."""
        return (
            not self.validate_only
            and self.reverted_at is None
            and self.status
            in (self.Status.SUCCEEDED, self.Status.SUCCEEDED_WITH_ERRORS, self.Status.CANCELLED)
            and self.rows_imported > 0
        )

    @property
    def can_revert(self) -> bool:
        """A user may ask for a revert: revertible, and not asked for already."""
        return self.is_revertible and self.revert_requested_at is None

    @property
    def revert_pending(self) -> bool:
        return self.revert_requested_at is not None and self.reverted_at is None

    @property
    def needs_polling(self) -> bool:
        """Its page changes by itself: the job runs, or a revert is on its way."""
        return self.is_active or self.revert_pending

    @property
    def can_import(self) -> bool:
        """A finished validate-only run whose stored file can now be imported for real, and
        was not already: an import made from it that is not reverted (and did not fail)
        holds its rows, and a second one would count them again."""
        return (
            self.validate_only
            and self.status == self.Status.VALIDATED
            and bool(self.file)
            and self.import_made is None
        )

    @cached_property
    def import_made(self) -> Upload | None:
        """The import made from this validate-only run that still holds (or will hold) its
        rows: not reverted, not failed. None when there is none."""
        if not self.validate_only or self.pk is None:
            return None
        return (
            Upload.objects.filter(validated_upload=self, reverted_at__isnull=True)
            .exclude(status=self.Status.FAILED)
            .order_by("-created", "-id")
            .first()
        )

    @property
    def counts_identical_rows(self) -> bool:
        """Rows without an identifier are new usage: every one counts."""
        return self.rows_without_identifier == self.RowsWithoutIdentifier.NEW_USAGE

    def row_identifier_prefix(self) -> str | None:
        """For new usage, what a row without an identifier gets before its line when the
        identifier derived from its content is taken: unique to this upload and the same on
        every run of it (a resumed run never counts a row twice). None for a corrected copy:
        identifiers come from the rows' content alone."""
        return f"csvrow_{self.pk}_" if self.counts_identical_rows else None

    def meter_total_values(self) -> dict[int, tuple[int, Decimal]]:
        return {
            int(pk): (int(total["events"]), Decimal(total["value"]))
            for pk, total in self.meter_totals.items()
        }


class UploadDuplicates(models.Model):
    """The duplicate rows of one committed chunk of an upload: their lines and identifiers.

    One row per chunk, written in the chunk's transaction, so a re-import where every row is
    a duplicate pays one insert per chunk, not per row. Where each duplicate's twin was
    recorded is found only when a page of the table or its download is shown
    (``uploads.selectors``). Compact text, built in a few C calls (the chunk's writer thread
    holds the GIL the parser needs): the lines as runs of consecutive lines, the identifiers
    joined by newlines (a JSON list when one of them holds a newline).
    """

    upload = models.ForeignKey(
        Upload, on_delete=models.CASCADE, related_name="duplicate_chunks", db_index=False
    )
    start = models.BigIntegerField()  # the chunk's first record position in the file
    rows = models.PositiveIntegerField()  # how many duplicates it lists
    line_runs = models.TextField()  # JSON: [[first line, last line], ...], ascending
    identifiers = models.TextField()  # in line order; see ``identifiers_json``
    identifiers_json = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "upload duplicates"
        constraints = [
            models.UniqueConstraint(fields=["upload", "start"], name="uploadduplicates_chunk"),
        ]

    def __str__(self) -> str:
        return f"{self.rows} duplicates of upload {self.upload_id} from record {self.start}"

    @classmethod
    def of_chunk(
        cls, *, upload_id: int, start: int, lines: list[int], identifiers: list[str]
    ) -> UploadDuplicates:
        """The row for a chunk's duplicates: ``lines`` ascending, ``identifiers`` alike."""
        ends = np.flatnonzero(np.diff(np.asarray(lines, dtype=np.int64)) != 1)
        firsts = [lines[0], *(lines[end + 1] for end in ends.tolist())]
        lasts = [*(lines[end] for end in ends.tolist()), lines[-1]]
        joined = "\n".join(identifiers)
        as_json = joined.count("\n") != len(identifiers) - 1
        return cls(
            upload_id=upload_id,
            start=start,
            rows=len(lines),
            line_runs=json.dumps([list(run) for run in zip(firsts, lasts, strict=True)]),
            identifiers=json.dumps(identifiers) if as_json else joined,
            identifiers_json=as_json,
        )

    def entries(self) -> list[tuple[int, str]]:
        """(line, identifier) of each duplicate, in line order."""
        lines = [
            line for first, last in json.loads(self.line_runs) for line in range(first, last + 1)
        ]
        identifiers = (
            json.loads(self.identifiers) if self.identifiers_json else self.identifiers.split("\n")
        )
        return list(zip(lines, identifiers, strict=True))


class S3Connector(models.Model):
    """A bucket (and prefix) the portal polls for usage files (Stripe's S3 import).

    Its files are imported as the connector's own user, ``s3:<name>``, so every event and
    upload it brings in says where it came from, as an API key's do.
    """

    name = models.CharField(max_length=100, unique=True)
    bucket = models.CharField(max_length=63)
    prefix = models.CharField(max_length=512, blank=True)
    region = models.CharField(max_length=32, default="us-east-1")
    # For S3-compatible stores (MinIO, Ceph); empty: Amazon S3 itself.
    endpoint_url = models.URLField(max_length=500, blank=True)
    # Empty: the default AWS credential chain (an instance role, the environment).
    access_key_id = models.CharField(max_length=128, blank=True)
    secret_encrypted = models.TextField(blank=True)  # Fernet, see usage_portal.secrets
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="s3_connector"
    )
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    paused_at = models.DateTimeField(null=True, blank=True)
    # Validate only: each file is checked and reported, nothing recorded; "Import" on its
    # upload's page imports it for real (as for a browser upload's validate-only run).
    validate_only = models.BooleanField(default=False)
    # What its files' rows without an identifier are, as a browser upload asks: new usage
    # (each counts; a new version of a file counts again), or corrected copies (rows
    # identical to rows imported before are not counted again).
    rows_without_identifier = models.CharField(
        max_length=16,
        choices=Upload.RowsWithoutIdentifier.choices,
        default=Upload.RowsWithoutIdentifier.NEW_USAGE,
    )
    # Set when the store refused the credentials: polling stops until they are changed (or a
    # test or "Sync now" succeeds), rather than failing every five minutes.
    credentials_problem = models.TextField(blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_sync_problem = models.TextField(blank=True)  # the last poll's failure, if it failed

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("uploads:connector_detail", kwargs={"connector_pk": self.pk})

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    @property
    def store(self) -> str:
        """Which store the bucket is in: its endpoint, or Amazon S3's (empty)."""
        return self.endpoint_url.rstrip("/")

    @property
    def errors_prefix(self) -> str:
        """Where error files are written back (and never imported from)."""
        return f"{self.prefix}errors/"


class S3Object(models.Model):
    """One version of one object a connector listed: imported once, whatever happens.

    The store, bucket, key and ETag name it (unique); the same key with a new ETag is a new
    file. Once downloaded it becomes an ``Upload``, whose status is the file's from then on.
    """

    class State(models.TextChoices):
        FOUND = "found", "Found"  # listed; its download is queued or being retried
        DOWNLOADED = "downloaded", "Downloaded"  # an upload holds it: see upload.status
        FAILED = "failed", "Failed"  # never downloaded, for the reason given

    connector = models.ForeignKey(S3Connector, on_delete=models.PROTECT, related_name="files")
    store = models.CharField(max_length=500, blank=True)
    bucket = models.CharField(max_length=63)
    key = models.CharField(max_length=1024)
    etag = models.CharField(max_length=200)
    size_bytes = models.BigIntegerField()
    last_modified = models.DateTimeField(null=True, blank=True)
    found_at = models.DateTimeField(auto_now_add=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.FOUND)
    problem = models.TextField(blank=True)  # why it failed, or the last download attempt's error
    attempts = models.PositiveIntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True)
    upload = models.OneToOneField(
        Upload, null=True, blank=True, on_delete=models.PROTECT, related_name="s3_object"
    )
    # The error file written back beside the object (for a file with failed rows).
    errors_key = models.CharField(max_length=1100, blank=True)
    errors_written_at = models.DateTimeField(null=True, blank=True)
    errors_problem = models.TextField(blank=True)

    class Meta:
        ordering = ["-found_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["store", "bucket", "key", "etag"], name="s3object_version_once"
            ),
            models.CheckConstraint(
                condition=Q(state="downloaded", upload__isnull=False)
                | (~Q(state="downloaded") & Q(upload__isnull=True)),
                name="s3object_downloaded_has_upload",
            ),
        ]
        indexes = [models.Index(fields=["connector", "state"], name="s3object_connector_state")]

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def status(self) -> str:
        """The file's status as its connector's page shows it."""
        if self.upload is None:
            return self.get_state_display()
        upload = self.upload
        if upload.status in Upload.ACTIVE_STATUSES:
            return "Queued" if upload.status == Upload.Status.QUEUED else "Importing"
        return upload.get_status_display()

    @property
    def badge_class(self) -> str:
        """The status badge's class: an upload status's, so it has that status's colour."""
        if self.upload is not None:
            return self.upload.status
        return Upload.Status.FAILED if self.state == self.State.FAILED else Upload.Status.QUEUED
