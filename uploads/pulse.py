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

import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.utils import timezone

from uploads.models import Upload

CHECK_SECONDS = 0.5  # between two reads of the job's state


class RunSuperseded(Exception):
    """Another run owns the job now (or it ended); this one stops without writing."""


class CancelRequested(Exception):
    """A user asked for the job to be cancelled."""


def run_check(upload_id: int, token: str) -> None:
    """``RunSuperseded`` or ``CancelRequested`` if this run should stop; an unlocked read."""
    state = (
        Upload.objects.filter(pk=upload_id)
        .values("run_token", "finished_at", "cancel_requested_at")
        .first()
    )
    if state is None or state["run_token"] != token or state["finished_at"] is not None:
        raise RunSuperseded
    if state["cancel_requested_at"] is not None:
        raise CancelRequested


def cancel_flag(upload_id: int) -> Path | None:
    """On SQLite, the file that says "cancel this upload" without the database's write lock.

    Why: SQLite has one write lock for the whole database, and a job's writer takes it for
    one chunk after another; a user's cancellation, waiting for the lock, got it only when
    the import had ended. So the cancellation also raises this flag, next to the database
    file, and the job's pulse (reading it takes no lock) stops the writers, which frees the
    lock. On PostgreSQL (row locks) there is none."""
    if connection.vendor != "sqlite":
        return None
    database = Path(str(connection.settings_dict["NAME"]))
    return database.with_name(f"{database.name}.cancel-upload-{upload_id}")


def cancel_flag_raise(upload_id: int) -> None:
    if (flag := cancel_flag(upload_id)) is not None:
        flag.touch()


def cancel_flag_lower(upload_id: int) -> None:
    if (flag := cancel_flag(upload_id)) is not None:
        flag.unlink(missing_ok=True)


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
        run_check(self.upload_id, self.token)
        if now >= self._next_beat:
            self._next_beat = now + self._heartbeat_seconds
            beat = Upload.objects.filter(
                pk=self.upload_id, run_token=self.token, finished_at__isnull=True
            ).update(heartbeat_at=timezone.now())
            if not beat:
                raise RunSuperseded


def no_pulse() -> None:
    """A pulse for code run outside a job (tests, benchmarks)."""
