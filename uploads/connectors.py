"""Writes for S3 import: connectors (create, change, pause, test), polling their buckets,
downloading each file found into an upload, and writing error files back beside them.

Exactly once: a listed object version (store, bucket, key, ETag) is one ``S3Object`` row,
inserted with ``ON CONFLICT DO NOTHING`` however often or by how many pollers it is listed.
Its download runs without a lock held; the upload is created only in the transaction that
locks the row and finds it still ``found``, so of two workers racing one wins and the other
throws its copy away. A worker that dies mid-download leaves the row ``found``, and the next
poll sends it again. From the upload on, the pipeline's own guarantees hold (resumable,
each row counted once). The download asks for the listed ETag (``If-Match``): an object
replaced meanwhile fails this version, and its new version is a new file.
"""

from __future__ import annotations

import logging
import posixpath
import re
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from events.ingestion import event_batch_create
from events.models import EventBatch
from uploads import s3
from uploads.limits import max_upload_bytes
from uploads.models import S3Connector, S3Object, Upload
from uploads.reading import format_bytes
from uploads.s3 import StoreProblem
from uploads.services import upload_enqueue
from usage_portal.audit import audit_record
from usage_portal.crypto import secret_encrypt
from usage_portal.models import AuditEntry
from usage_portal.outbound import outbound_url_problem

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[\w .@+-]+$")
# Bucket names as S3 allows them (3-63 of a-z 0-9 . -, starting and ending alphanumeric).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{2,32}$")
# A found file whose download was sent this long ago and has not happened is sent again.
DOWNLOAD_STALE = timedelta(minutes=2)
SUFFIXES = {".csv": Upload.Format.CSV, ".jsonl": Upload.Format.JSONL}
SUFFIXES |= {".ndjson": Upload.Format.JSONL, ".json": Upload.Format.JSON}


def file_format_of(key: str) -> str | None:
    """The format a key's name says (``.csv``, ``.jsonl``, ``.ndjson``, ``.json``, each
    optionally ``.gz``), or None for another name."""
    name = key.lower().removesuffix(".gz")
    for suffix, file_format in SUFFIXES.items():
        if name.endswith(suffix):
            return str(file_format)
    return None


# --- Connectors -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConnectorFields:
    name: str
    bucket: str
    prefix: str
    region: str
    endpoint_url: str
    access_key_id: str
    validate_only: bool = False
    rows_without_identifier: str = Upload.RowsWithoutIdentifier.NEW_USAGE


def _checked(fields: ConnectorFields, *, secret: str | None, exclude_pk: int | None) -> None:
    errors: dict[str, str] = {}
    if not fields.name or len(fields.name) > 100 or not _NAME.match(fields.name):
        errors["name"] = (
            "Give the connector a name of up to 100 letters, digits, spaces or . @ + - _ "
            "(for example 'billing-exports')."
        )
    elif S3Connector.objects.filter(name=fields.name).exclude(pk=exclude_pk or 0).exists():
        errors["name"] = f"A connector named '{fields.name}' exists already: choose another."
    if not _BUCKET.match(fields.bucket) or ".." in fields.bucket:
        errors["bucket"] = (
            "A bucket name is 3 to 63 lower-case letters, digits, dots or hyphens, starting "
            "and ending with a letter or digit (for example 'acme-usage')."
        )
    if fields.prefix.startswith("/") or len(fields.prefix) > 512:
        errors["prefix"] = (
            "A prefix is the start of the keys to import, without a leading slash (for "
            "example 'usage/' or 'exports/2026-'); leave it empty for the whole bucket."
        )
    if fields.rows_without_identifier not in Upload.RowsWithoutIdentifier.values:
        errors["rows_without_identifier"] = "Say what the files' rows without an identifier are."
    if not _REGION.match(fields.region):
        errors["region"] = "Give the bucket's region, such as us-east-1 or eu-west-1."
    if fields.endpoint_url and (problem := outbound_url_problem(fields.endpoint_url)):
        errors["endpoint_url"] = problem
    if fields.access_key_id and secret is not None and not secret:
        errors["secret_access_key"] = "Enter the secret access key that goes with the key ID."  # noqa: S105
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def connector_create(
    *, fields: ConnectorFields, secret_access_key: str, actor: User | None
) -> S3Connector:
    """A new connector; its files are imported as its own user ``s3:<name>``."""
    fields = _cleaned(fields)
    _checked(fields, secret=secret_access_key if fields.access_key_id else None, exclude_pk=None)
    user = User(username=f"s3:{fields.name}"[:150], first_name=fields.name, last_name="(S3)")
    user.set_unusable_password()  # never logs in to the pages
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as error:
        raise ValidationError({"name": f"The name '{fields.name}' is taken."}) from error
    connector = S3Connector.objects.create(
        name=fields.name,
        bucket=fields.bucket,
        prefix=fields.prefix,
        region=fields.region,
        endpoint_url=fields.endpoint_url,
        access_key_id=fields.access_key_id,
        validate_only=fields.validate_only,
        rows_without_identifier=fields.rows_without_identifier,
        secret_encrypted=secret_encrypt(secret_access_key)
        if fields.access_key_id and secret_access_key
        else "",
        user=user,
        created_by=actor,
    )
    audit_record(
        target=connector,
        action=AuditEntry.Action.CREATE,
        actor=actor,
        changes={name: [None, getattr(fields, name)] for name in ConnectorFields.__slots__},
    )
    return connector


def _cleaned(fields: ConnectorFields) -> ConnectorFields:
    return ConnectorFields(
        name=fields.name.strip(),
        bucket=fields.bucket.strip(),
        prefix=fields.prefix.strip(),
        region=fields.region.strip().lower() or "us-east-1",
        endpoint_url=fields.endpoint_url.strip(),
        access_key_id=fields.access_key_id.strip(),
        validate_only=fields.validate_only,
        rows_without_identifier=fields.rows_without_identifier,
    )


@transaction.atomic
def connector_update(
    *,
    connector: S3Connector,
    fields: ConnectorFields,
    secret_access_key: str = "",
    actor: User | None,
) -> S3Connector:
    """Change a connector. An empty secret keeps the stored one (it is never shown); a
    changed key ID needs its secret. Changed credentials or place clear a credentials
    problem, so polling starts again."""
    locked = S3Connector.objects.select_for_update().get(pk=connector.pk)
    fields = _cleaned(fields)
    key_changed = fields.access_key_id != locked.access_key_id
    needs_secret = bool(fields.access_key_id) and (key_changed or not locked.secret_encrypted)
    _checked(fields, secret=secret_access_key if needs_secret else None, exclude_pk=locked.pk)
    changes = {
        name: [getattr(locked, name), getattr(fields, name)]
        for name in ConnectorFields.__slots__
        if getattr(locked, name) != getattr(fields, name)
    }
    for name in ConnectorFields.__slots__:
        setattr(locked, name, getattr(fields, name))
    if not fields.access_key_id:
        locked.secret_encrypted = ""
    elif secret_access_key:
        locked.secret_encrypted = secret_encrypt(secret_access_key)
        changes["secret_access_key"] = ["(kept)", "(replaced)"]
    if changes:
        locked.credentials_problem = ""
    locked.save()
    if "name" in changes:
        User.objects.filter(pk=locked.user_id).update(
            username=f"s3:{locked.name}"[:150], first_name=locked.name
        )
    if changes:
        audit_record(target=locked, action=AuditEntry.Action.UPDATE, actor=actor, changes=changes)
    return locked


@transaction.atomic
def connector_pause(*, connector: S3Connector, paused: bool, actor: User | None) -> S3Connector:
    """Pause (no polling, no downloads; imports under way finish) or resume a connector."""
    locked = S3Connector.objects.select_for_update().get(pk=connector.pk)
    if locked.is_paused == paused:
        return locked
    locked.paused_at = timezone.now() if paused else None
    locked.save(update_fields=["paused_at"])
    audit_record(
        target=locked,
        action=AuditEntry.Action.DEACTIVATE if paused else AuditEntry.Action.REACTIVATE,
        actor=actor,
        changes={"paused": [not paused, paused]},
    )
    if not paused:  # poll at once: files may have arrived meanwhile
        transaction.on_commit(lambda: _sync_soon(locked))
    return locked


def _sync_soon(connector: S3Connector) -> None:
    from uploads.tasks import s3_connector_sync_task

    _send(s3_connector_sync_task, connector.pk, "S3 connector")


def _send(task: Any, pk: int, what: str) -> bool:
    """Send ``task`` for ``pk`` once, without retrying: False (and a warning) when the
    broker is unreachable; the next poll sends it again."""
    try:
        task.apply_async(args=[pk], retry=False)
    except Exception:  # any broker failure: kombu, redis, OS errors
        logger.warning("%s %s: the broker is unreachable.", what, pk, exc_info=True)
        return False
    return True


@dataclass(frozen=True, slots=True)
class ConnectionTest:
    keys: list[str]  # a few of the keys under the prefix
    problem: str  # "" when the connection works


def connector_test(*, connector: S3Connector) -> ConnectionTest:
    """List a few objects under the prefix, or say what is wrong."""
    try:
        keys = [
            listed.key
            for listed in s3.objects_listed(connector, limit=50)
            if not listed.key.startswith(connector.errors_prefix) and not listed.key.endswith("/")
        ][:5]
    except StoreProblem as problem:
        if problem.kind == s3.CREDENTIALS:
            _credentials_problem_record(connector, problem.message)
        return ConnectionTest([], problem.message)
    _credentials_problem_record(connector, "")
    return ConnectionTest(keys, "")


def _credentials_problem_record(connector: S3Connector, message: str) -> None:
    S3Connector.objects.filter(pk=connector.pk).update(credentials_problem=message)
    connector.credentials_problem = message


# --- Polling ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SyncOutcome:
    listed: int
    new: int
    problem: str


def connector_sync(*, connector: S3Connector) -> SyncOutcome:
    """List the bucket under the prefix; record each object version not seen before and
    send its download. Error files the portal wrote (``<prefix>errors/``) and folder markers
    are skipped; a name that is no usage file, or an empty object, is recorded as failed
    with the reason, so it shows on the connector's page."""
    listed = new = 0
    problem = ""
    try:
        batch: list[S3Object] = []
        for item in s3.objects_listed(connector):
            if item.key.startswith(connector.errors_prefix) or item.key.endswith("/"):
                continue
            listed += 1
            batch.append(_object_of(connector, item))
            if len(batch) >= 1000:
                new += _objects_record(batch)
                batch = []
        new += _objects_record(batch)
    except StoreProblem as failure:
        problem = failure.message
        if failure.kind == s3.CREDENTIALS:
            _credentials_problem_record(connector, problem)
    else:
        if connector.credentials_problem:
            _credentials_problem_record(connector, "")
    S3Connector.objects.filter(pk=connector.pk).update(
        last_synced_at=timezone.now(), last_sync_problem=problem
    )
    if not problem:
        s3_objects_send(connector=connector)
    return SyncOutcome(listed, new, problem)


def _object_of(connector: S3Connector, item: s3.ListedObject) -> S3Object:
    found = S3Object(
        connector=connector,
        store=connector.store,
        bucket=connector.bucket,
        key=item.key,
        etag=item.etag,
        size_bytes=item.size_bytes,
        last_modified=item.last_modified,
    )
    limit = min(settings.USAGE_S3_MAX_OBJECT_BYTES, max_upload_bytes())
    if file_format_of(item.key) is None:
        found.state = S3Object.State.FAILED
        found.problem = (
            "Not imported: the name does not end in .csv, .json, .jsonl or .ndjson (each "
            "optionally .gz). Rename the object if it holds usage."
        )
    elif item.size_bytes == 0:
        found.state = S3Object.State.FAILED
        found.problem = "The object is empty (0 bytes): there is nothing to import."
    elif item.size_bytes > limit:
        found.state = S3Object.State.FAILED
        found.problem = (
            f"The object is {format_bytes(item.size_bytes)}, larger than the limit of "
            f"{format_bytes(limit)}. Split it into smaller files."
        )
    return found


def _objects_record(batch: list[S3Object]) -> int:
    """Insert the versions not recorded yet (a racing poller's are skipped by the unique
    constraint); how many this call found new."""
    if not batch:
        return 0
    first = batch[0]
    known = set(
        S3Object.objects.filter(
            store=first.store, bucket=first.bucket, key__in=[found.key for found in batch]
        ).values_list("key", "etag")
    )
    new = [found for found in batch if (found.key, found.etag) not in known]
    S3Object.objects.bulk_create(new, ignore_conflicts=True)
    return len(new)


def s3_objects_send(*, connector: S3Connector) -> int:
    """Send the download of each found file not sent lately (none while paused)."""
    from uploads.tasks import s3_object_import_task

    if connector.is_paused or connector.credentials_problem:
        return 0
    now = timezone.now()
    due = S3Object.objects.filter(connector=connector, state=S3Object.State.FOUND).exclude(
        queued_at__gte=now - DOWNLOAD_STALE
    )
    ids = list(due.order_by("pk").values_list("pk", flat=True)[:1000])
    S3Object.objects.filter(pk__in=ids).update(queued_at=now)
    sent = 0
    for object_id in ids:
        if _send(s3_object_import_task, object_id, "S3 object"):
            sent += 1
        else:
            S3Object.objects.filter(pk=object_id).update(queued_at=None)
    return sent


def connectors_poll() -> list[int]:
    """The beat's poll: send a sync of every connector neither paused nor refused its
    credentials, and any error file not yet written back. The connectors sent."""
    from uploads.tasks import s3_connector_sync_task

    sent = []
    for connector in S3Connector.objects.filter(paused_at__isnull=True, credentials_problem=""):
        if _send(s3_connector_sync_task, connector.pk, "S3 connector"):
            sent.append(connector.pk)
    for object_id in S3Object.objects.filter(
        state=S3Object.State.DOWNLOADED,
        errors_written_at__isnull=True,
        upload__rows_failed__gt=0,
        upload__status__in=Upload.FINISHED_STATUSES,
        connector__paused_at__isnull=True,
    ).values_list("pk", flat=True)[:100]:
        s3_errors_write_soon(object_id=object_id)
    return sent


# --- One file ---------------------------------------------------------------------------------
class DownloadRetry(Exception):
    """The download failed for a reason that passes (the store unreachable): try again."""


def s3_object_import(*, object_id: int) -> Upload | None:
    """Download one found file into an upload and queue its import (see the module doc).
    None when there is nothing to do (done, failed, paused, or credentials refused)."""
    found = S3Object.objects.select_related("connector").get(pk=object_id)
    connector = found.connector
    if found.state != S3Object.State.FOUND or connector.is_paused:
        return None
    if connector.credentials_problem:
        return None
    S3Object.objects.filter(pk=object_id).update(attempts=found.attempts + 1)
    limit = min(settings.USAGE_S3_MAX_OBJECT_BYTES, max_upload_bytes())
    name = posixpath.basename(found.key)[-100:] or "object"  # the stored name's end
    stored = ""
    try:
        body, _length = s3.object_body(connector, key=found.key, etag=found.etag, max_bytes=limit)
        stored = default_storage.save(
            f"uploads/s3/{connector.pk}/{found.pk}-{name}", File(cast("IO[bytes]", body))
        )
        size = default_storage.size(stored)
    except StoreProblem as problem:
        if stored:
            default_storage.delete(stored)
        _download_failed(found, problem)
        return None
    except Exception:
        if stored:
            default_storage.delete(stored)
        raise
    upload = _upload_record(found, stored=stored, size=size)
    if upload is None:
        default_storage.delete(stored)  # another worker recorded this version first
    return upload


def _download_failed(found: S3Object, problem: StoreProblem) -> None:
    """Record why; raise ``DownloadRetry`` when trying again later may work."""
    if problem.kind == s3.CREDENTIALS:
        _credentials_problem_record(found.connector, problem.message)
        S3Object.objects.filter(pk=found.pk).update(problem=problem.message, queued_at=None)
        return
    if problem.kind in (s3.UNREACHABLE, s3.OTHER):
        S3Object.objects.filter(pk=found.pk).update(
            problem=f"Download attempt {found.attempts + 1} failed: {problem.message}"
        )
        raise DownloadRetry(problem.message)
    S3Object.objects.filter(pk=found.pk, state=S3Object.State.FOUND).update(
        state=S3Object.State.FAILED, problem=problem.message
    )


@transaction.atomic
def _upload_record(found: S3Object, *, stored: str, size: int) -> Upload | None:
    locked = S3Object.objects.select_for_update().select_related("connector").get(pk=found.pk)
    if locked.state != S3Object.State.FOUND:
        return None
    connector = locked.connector
    batch = event_batch_create(
        source=EventBatch.Source.S3, user=connector.user, dry_run=connector.validate_only
    )
    upload = Upload(
        original_name=locked.key[-255:],
        size_bytes=size,
        uploaded_by=connector.user,
        validate_only=connector.validate_only,
        file_format=file_format_of(locked.key) or Upload.Format.CSV,
        rows_without_identifier=connector.rows_without_identifier,
        batch=batch,
    )
    upload.file.name = stored
    upload.save()
    locked.state = S3Object.State.DOWNLOADED
    locked.upload = upload
    locked.problem = ""
    locked.save(update_fields=["state", "upload", "problem"])
    audit_record(
        target=upload,
        action=AuditEntry.Action.UPLOAD,
        actor=connector.user,
        changes={"file": [None, f"s3://{locked.bucket}/{locked.key}"], "etag": [None, locked.etag]},
    )
    transaction.on_commit(lambda: upload_enqueue(upload=upload))
    return upload


# --- Error files back to the bucket -----------------------------------------------------------
def s3_errors_write_soon(*, object_id: int) -> None:
    from uploads.tasks import s3_errors_write_task

    _send(s3_errors_write_task, object_id, "S3 object")


def upload_finished_announce(*, upload_id: int) -> None:
    """An upload finished: if it came from a bucket and has failed rows, write its error
    file back (called by the pipeline after its commit)."""
    found = S3Object.objects.filter(upload_id=upload_id, upload__rows_failed__gt=0).first()
    if found is not None and found.errors_written_at is None:
        s3_errors_write_soon(object_id=found.pk)


def s3_errors_write(*, object_id: int) -> str:
    """Write the file's error file beside it, under ``<prefix>errors/``; its key ("" when
    there is none to write). Written again in full if asked again: the same content."""
    from uploads.selectors import upload_error_file_lines

    found = S3Object.objects.select_related("connector", "upload").get(pk=object_id)
    upload = found.upload
    if upload is None or not upload.is_finished or not upload.rows_failed:
        return ""
    connector = found.connector
    relative = found.key.removeprefix(connector.prefix)
    key = f"{connector.errors_prefix}{relative}.errors.csv"
    with tempfile.TemporaryFile() as scratch:
        for text in upload_error_file_lines(upload=upload):
            scratch.write(text.encode("utf-8"))
        scratch.seek(0)
        try:
            s3.object_put(connector, key=key, body=scratch)
        except StoreProblem as problem:
            S3Object.objects.filter(pk=object_id).update(errors_problem=problem.message)
            if problem.kind == s3.CREDENTIALS:
                _credentials_problem_record(connector, problem.message)
            return ""
    S3Object.objects.filter(pk=object_id).update(
        errors_key=key, errors_written_at=timezone.now(), errors_problem=""
    )
    return key
