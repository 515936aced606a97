"""A running job's pulse: its heartbeat, and its ear for a cancellation, inside every long
pass over the file (validation, the on-disk counter's pass, the import).

Why inside the passes: the periodic re-queue (``uploads_requeue_stale``) takes a job whose
heartbeat is older than ``USAGE_UPLOAD_RUNNING_STALE_SECONDS`` for a dead one and runs it
again. A heartbeat written only when a chunk commits let a long validation pass (a wide
file, or millions of rows) look dead, so a second run replaced a first that was still
working, and so on for ever. And a cancellation heard only when a chunk commits came up to
three chunks late.

A ``Pulse`` is called often (every few hundred records); it costs a clock read until it is
due. Then it reads the job's state (about twice a second: a cancellation is heard within a
second) and writes the heartbeat every ``USAGE_UPLOAD_HEARTBEAT_SECONDS``. It raises
``CancelRequested`` or ``RunSuperseded``; the pipeline stops on either.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.utils import timezone

from uploads.models import Upload
from usage_portal.sqlite_lock import beside_database

CHECK_SECONDS = 0.5  # between two reads of the job's state


class RunSuperseded(Exception):
    """Another run owns the job now (or it ended); this one stops without writing."""


class CancelRequested(Exception):
    """A user asked for the job to be cancelled."""


def run_check(upload_id: int, token: str) -> datetime | None:
    """``RunSuperseded`` or ``CancelRequested`` if this run should stop; an unlocked read.
    Returns the job's committed heartbeat."""
    state = (
        Upload.objects.filter(pk=upload_id)
        .values("run_token", "finished_at", "cancel_requested_at", "heartbeat_at")
        .first()
    )
    if state is None or state["run_token"] != token or state["finished_at"] is not None:
        raise RunSuperseded
    if state["cancel_requested_at"] is not None:
        raise CancelRequested
    heartbeat: datetime | None = state["heartbeat_at"]
    return heartbeat


def cancel_flag(upload_id: int) -> Path | None:
    """On SQLite, the file that says "cancel this upload" without the database's write lock.

    Why: SQLite has one write lock for the whole database, and a job's writer takes it for
    one chunk after another; a user's cancellation, waiting for the lock, got it only when
    the import had ended. So the cancellation also raises this flag, next to the database
    file, and the job's pulse (reading it takes no lock) stops the writers, which frees the
    lock. On PostgreSQL (row locks) there is none."""
    return beside_database(f"cancel-upload-{upload_id}")


def cancel_flag_raise(upload_id: int) -> None:
    if (flag := cancel_flag(upload_id)) is not None:
        flag.touch()


def cancel_flag_lower(upload_id: int) -> None:
    if (flag := cancel_flag(upload_id)) is not None:
        flag.unlink(missing_ok=True)


# --- SQLite: the progress of the writer's open transaction, for the live panel ---------------
# The writer commits several chunks at once (``uploads.writers.Span``), so the committed
# progress moves only every few seconds; after each chunk the writer also writes the
# progress its transaction holds to this file, and the upload page shows it while the job
# runs. A file left by a run that died (its transaction rolled back) is ignored once stale.
_PENDING_FIELDS = ("rows_read", "rows_imported", "rows_duplicate", "rows_failed", "meter_totals")
PENDING_STALE_SECONDS = 60


def _pending_file(upload_id: int) -> Path | None:
    flag = cancel_flag(upload_id)
    return None if flag is None else flag.with_name(f"{flag.name}.progress.json")


def pending_progress_write(upload_id: int) -> None:
    """Write the job's progress as this connection sees it (inside the writer's span)."""
    if (path := _pending_file(upload_id)) is None:
        return
    values = Upload.objects.filter(pk=upload_id).values("run_token", *_PENDING_FIELDS).first()
    if values is None:
        return
    scratch = path.with_name(f"{path.name}.{os.getpid()}")
    scratch.write_text(json.dumps(values))
    os.replace(scratch, path)


def pending_progress_clear(upload_id: int) -> None:
    if (path := _pending_file(upload_id)) is not None:
        path.unlink(missing_ok=True)


def pending_progress_apply(upload: Upload) -> None:
    """Show on ``upload`` (not saved) what its running job has written and not committed."""
    if upload.status not in Upload.RUNNING_STATUSES or (path := _pending_file(upload.pk)) is None:
        return
    try:
        written = path.stat().st_mtime
        if time.time() - written > PENDING_STALE_SECONDS:
            return
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if values.get("run_token") != upload.run_token or values["rows_read"] <= upload.rows_read:
        return
    for name in _PENDING_FIELDS:
        setattr(upload, name, values[name])
    upload.heartbeat_at = datetime.fromtimestamp(written, tz=UTC)  # the progress's time


class Pulse:
    """Call it inside a long pass: the heartbeat and the cancellation check when due."""

    def __init__(
        self,
        upload_id: int,
        token: str,
        *,
        heartbeat_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upload_id, self.token, self._clock = upload_id, token, clock
        if heartbeat_seconds is None:
            heartbeat_seconds = float(getattr(settings, "USAGE_UPLOAD_HEARTBEAT_SECONDS", 10))
        self._heartbeat_seconds = heartbeat_seconds
        self._flag = cancel_flag(upload_id)
        now = clock()
        self._next_check = now + min(CHECK_SECONDS, heartbeat_seconds)
        self._next_beat = now + heartbeat_seconds

    def __call__(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + min(CHECK_SECONDS, self._heartbeat_seconds)
        if self._flag is not None and self._flag.exists():
            raise CancelRequested
        committed_beat = run_check(self.upload_id, self.token)
        if now < self._next_beat:
            return
        self._next_beat = now + self._heartbeat_seconds
        if self._kept_fresh(committed_beat):
            return
        beat = Upload.objects.filter(
            pk=self.upload_id, run_token=self.token, finished_at__isnull=True
        ).update(heartbeat_at=timezone.now())
        if not beat:
            raise RunSuperseded

    def _kept_fresh(self, committed_beat: datetime | None) -> bool:
        """SQLite: the job's writer commits several chunks at once, and each chunk's progress
        carries a heartbeat; while those commits keep it fresh (three beats), this one would
        only cut the writer's span short (it waits for the write lock, and says so)."""
        if connection.vendor != "sqlite" or committed_beat is None:
            return False
        return timezone.now() - committed_beat < timedelta(seconds=3 * self._heartbeat_seconds)


def no_pulse() -> None:
    """A pulse for code run outside a job (tests, benchmarks)."""
