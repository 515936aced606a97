"""API keys and the replies kept for ``Idempotency-Key``.

A key acts as a user of its own (``ApiKey.user``: no password, one role group), so every
write made with it goes through the same services as staff's and is recorded with the key's
name (``api:<name>``) wherever staff's writes name their user: batches, the audit trail.
The secret is shown once; only its SHA-256 digest is stored (a key is 256 random bits, so a
fast digest is as safe as a slow one and costs nothing per request).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ApiKey(models.Model):
    name = models.CharField(max_length=100)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_key"
    )
    prefix = models.CharField(max_length=16)  # the secret's first characters, to tell keys apart
    secret_digest = models.CharField(max_length=64)  # SHA-256, hex
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_keys_created",
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["name"], name="apikey_unique_name"),
            models.UniqueConstraint(fields=["secret_digest"], name="apikey_unique_digest"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class IdempotentReply(models.Model):
    """The reply to a POST sent with an ``Idempotency-Key``: replayed to the same request
    with the same key, refused to another. Kept at least 24 hours."""

    # No constraint in the database: its check would share-lock the key's row on every
    # write of every request (a MultiXact per write once requests overlap). Keys are never
    # deleted, only revoked. No index of its own: the unique (api_key, key) serves.
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.CASCADE, related_name="+", db_constraint=False, db_index=False
    )
    key = models.CharField(max_length=255)
    request_digest = models.CharField(max_length=64)  # method, path and parameters
    status = models.PositiveSmallIntegerField()
    body = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="idempotentreply_unique_key")
        ]
        # No index on created: pruning walks the oldest ids (``services.rows_prune``), and
        # each index is one more write per API call.

    def __str__(self) -> str:
        return f"{self.key} ({self.status or 'running'})"


class MeterEventSession(models.Model):
    """A v2 meter event session: a token for ``/v2/billing/meter_event_stream``, valid for
    15 minutes. Only the token's digest is kept."""

    public_id = models.CharField(max_length=40)
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    token_digest = models.CharField(max_length=64)
    created = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["token_digest"], name="metereventsession_unique_digest")
        ]
        indexes = [models.Index(fields=["expires_at"], name="metereventsession_expires")]

    def __str__(self) -> str:
        return self.public_id


class StreamRequest(models.Model):
    """The durable inbox of the API's event writes: one row per accepted request, written
    before the reply, its events as JSON. ``/v2/billing/meter_event_stream`` keeps up to 100
    events a row (checked for shape only); v1 (and v2) meter event creates keep one, already
    validated by the core, with its ``identifier`` (unique here: a second create with it
    finds this row while the event waits). Workers drain the inbox through the core; a row is
    marked drained in the same transaction as its events are stored, so each is counted once
    whatever crashes. Drained rows are pruned after ``api.stream.INBOX_KEEP``."""

    # Few indexes, each one more write per API call: no constraint or index for the key
    # (see IdempotentReply) or the batch (batches are never deleted), the identifier's only
    # where there is one, none on drained_at (pruning walks the oldest ids).
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    received_at = models.DateTimeField(default=timezone.now)
    events = models.TextField()  # [{"event_name", "payload", "identifier", "timestamp"}]
    event_count = models.PositiveSmallIntegerField()
    identifier = models.CharField(  # noqa: DJ001 - NULL: a stream request's (many events)
        max_length=101, null=True, blank=True, db_collation="BINARY"
    )
    drained_at = models.DateTimeField(null=True, blank=True)
    batch = models.ForeignKey(
        "events.EventBatch",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["id"], condition=Q(drained_at__isnull=True), name="streamrequest_undrained"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["identifier"],
                condition=Q(identifier__isnull=False),
                name="streamrequest_unique_identifier",
            )
        ]

    def __str__(self) -> str:
        return f"stream request {self.pk} ({self.event_count} events)"
