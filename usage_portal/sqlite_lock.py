"""SQLite's one write lock, shared between an import's long transactions and everyone else.

Why: on SQLite an import writes several chunks in one transaction (``uploads.writers.Span``).
Each commit writes every page it dirtied to the WAL and then into the database file, and a
chunk of random customers and hours dirties most pages of the events' and rollups' indexes:
1M rows into a database of 6M events wrote 20 GB at a commit per 100,000 rows (63 s), 9 GB
in one transaction with a larger page cache (39 s). The price of a long transaction is the
write lock it holds; so a writer that waits for the lock says so, by touching a flag file
beside the database (no lock needed) again and again while it waits, and the import, at the
end of each chunk, sees the flag's time change, commits, and steps aside until the flag is
quiet.

Every connection's writes do this (``announce_writes``, installed on each new SQLite
connection): a statement that takes the lock outside a transaction (``BEGIN IMMEDIATE``,
which opens every transaction here, or a write in autocommit) is tried with a short busy
timeout, the flag touched before each try, until the connection's usual timeout is spent.
A background job that can wait (the daily-rollup refresh) first waits quietly for a while
(``write_lock_patience``), so that it does not cut every span short; the import's pulse
(``uploads.pulse``) does not announce at all. On PostgreSQL (row locks) none of this exists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper

# Statements that take the write lock when run outside a transaction.
_WRITES = ("BEGIN", "INSERT", "UPDATE", "DELETE", "REPLACE")
_TRY_MS = 200  # the busy timeout of each try while announcing
_local = threading.local()


def beside_database(name: str, wrapper: BaseDatabaseWrapper | None = None) -> Path | None:
    """On SQLite, the file ``<database>.<name>`` beside the database file (a flag another
    process reads without the write lock); None on PostgreSQL."""
    if wrapper is None:
        from django.db import connection

        wrapper = connection
    if wrapper.vendor != "sqlite":
        return None
    database = Path(str(wrapper.settings_dict["NAME"]))
    return database.with_name(f"{database.name}.{name}")


def wanted_flag(wrapper: BaseDatabaseWrapper | None = None) -> Path | None:
    """The flag file ("a writer wants the lock") beside the database; None on PostgreSQL."""
    return beside_database("write-lock-wanted", wrapper)


def wanted_stamp(flag: Path) -> int:
    """The flag's time (nanoseconds), 0 if it was never raised: a change means a wish."""
    try:
        return flag.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@contextmanager
def write_lock_patience(seconds: float | None) -> Iterator[None]:
    """This thread's writes wait ``seconds`` for the lock quietly before they announce;
    None: they never announce (they wait as SQLite does, up to the connection's timeout)."""
    before = getattr(_local, "patience", 0.0)
    _local.patience = seconds
    try:
        yield
    finally:
        _local.patience = before


def _busy_timeout(raw: Any, ms: int) -> None:
    raw.execute(f"PRAGMA busy_timeout = {int(ms)}")


def _locked(error: OperationalError) -> bool:
    return "locked" in str(error)


def _announced(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    wrapper: BaseDatabaseWrapper = context["connection"]
    patience = getattr(_local, "patience", 0.0)
    if (
        wrapper.in_atomic_block
        or patience is None
        or not sql.lstrip()[:7].upper().startswith(_WRITES)
    ):
        return execute(sql, params, many, context)
    flag = wanted_flag(wrapper)
    assert flag is not None
    if many:  # rows in autocommit commit one by one: no retry, one wish
        flag.touch()  # its time is the wish
        return execute(sql, params, many, context)
    raw = wrapper.connection
    usual_ms = int(float(wrapper.settings_dict["OPTIONS"].get("timeout", 5)) * 1000)
    deadline = time.monotonic() + patience + usual_ms / 1000
    try:
        if patience:
            _busy_timeout(raw, int(patience * 1000))
            try:
                return execute(sql, params, many, context)
            except OperationalError as error:
                if not _locked(error):
                    raise
        _busy_timeout(raw, _TRY_MS)
        while True:  # nothing was done by a try that found the lock taken: try again
            flag.touch()  # its time is the wish
            try:
                return execute(sql, params, many, context)
            except OperationalError as error:
                if not _locked(error) or time.monotonic() > deadline:
                    raise
    finally:
        _busy_timeout(raw, usual_ms)


def announce_writes(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """``connection_created``: on SQLite, this connection's writes announce themselves."""
    if connection.vendor == "sqlite" and _announced not in connection.execute_wrappers:
        connection.execute_wrappers.append(_announced)
