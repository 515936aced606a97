"""SQLite's one write lock, shared between an import's long transactions and everyone else.

Why: on SQLite an import writes several chunks in one transaction (``uploads.writers.Span``).
Each commit writes every page it dirtied to the WAL and then into the database file, and a
chunk of random customers and hours dirties most pages of the events' and rollups' indexes:
1M rows into a database of 6M events wrote 20 GB at a commit per 100,000 rows (63 s), 9 GB
in one transaction with a larger page cache (39 s). The price of a long transaction is the
write lock it holds; so a writer that wants the lock says so first, by touching a flag file
beside the database (no lock needed), and the import, between two chunks, sees the flag's
time change, commits, and steps aside for a moment.

Who says so: every request of the portal (``WriteLockWantedMiddleware``: a manual entry, a
login, a session save) and every import beginning a transaction, so that two imports take
turns chunk by chunk. Background jobs that can wait (the daily-rollup refresh) do not: they
take the lock when the import commits on its own, at least every
``USAGE_UPLOAD_SQLITE_SPAN_SECONDS``. On PostgreSQL (row locks) none of this exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import connection
from django.http import HttpRequest, HttpResponse

# Statements that take the write lock when run outside a transaction (BEGIN IMMEDIATE opens
# every transaction on SQLite; see settings).
_WRITES = ("BEGIN", "INSERT", "UPDATE", "DELETE", "REPLACE")


def wanted_flag() -> Path | None:
    """The flag file ("a writer wants the lock") beside the database; None on PostgreSQL."""
    if connection.vendor != "sqlite":
        return None
    database = Path(str(connection.settings_dict["NAME"]))
    return database.with_name(f"{database.name}.write-lock-wanted")


def write_lock_want() -> None:
    """Say that this process is about to wait for the write lock."""
    if (flag := wanted_flag()) is None:
        return
    try:
        os.utime(flag)
    except FileNotFoundError:
        flag.touch()


def wanted_stamp(flag: Path) -> int:
    """The flag's time (nanoseconds), 0 if it was never raised: a change means a new wish."""
    try:
        return flag.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _announced(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    if not context["connection"].in_atomic_block and sql.lstrip()[:7].upper().startswith(_WRITES):
        write_lock_want()
    return execute(sql, params, many, context)


class WriteLockWantedMiddleware:
    """Each write a request makes on SQLite first raises the flag (outermost, so that the
    session's save at the end is covered too)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if connection.vendor != "sqlite":
            return self.get_response(request)
        with connection.execute_wrapper(_announced):
            return self.get_response(request)
