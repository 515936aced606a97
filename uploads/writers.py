"""Committing an upload's chunks on several database connections at once.

Why: a first import is bound by PostgreSQL (index upkeep of events and rollups, one backend
per connection), and by the worker's parsing, which waits while its one connection works.
With writer threads, each with its own connection, chunk N is parsed while chunks N-1 and
N-2 are written, and the writes of two chunks use both cores. Each chunk still commits in
one transaction with its share of the job's progress; see ``uploads.pipeline``.

The threads wait on the database with the GIL released, so they overlap with the parsing
thread; their own Python work (validation, COPY text) takes turns with it.

On SQLite the one writer thread commits several chunks together (``Span``): each chunk is
still all or nothing with its progress, and a span is all or nothing with its chunks.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from usage_portal.sqlite_lock import wanted_stamp

Item = TypeVar("Item")


class Turnstile:
    """Lets numbered chunks through a section in number order, without making one wait for a
    later one: a chunk that never enters the section is marked ``done`` and skipped."""

    def __init__(self) -> None:
        self._next = 0
        self._done: set[int] = set()
        self._changed = threading.Condition()

    @contextmanager
    def turn(self, number: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._next >= number)
        try:
            yield
        finally:
            self.done(number)

    def done(self, number: int) -> None:
        """``number`` is through (or will never enter); never waits."""
        with self._changed:
            self._done.add(number)
            while self._next in self._done:
                self._done.discard(self._next)
                self._next += 1
            self._changed.notify_all()


class Span:
    """SQLite: a writer thread's chunks in one transaction, for fewer commits (each writes
    every page it dirtied; see ``usage_portal.sqlite_lock``). Committed ``seconds`` after it
    began, when the writer ends, and when another connection waits for the write lock (its
    wish, the flag's changed time, is seen at the end of each chunk, and every
    ``POLL_SECONDS`` while the writer waits for one): then this writer steps aside until
    the flag has been quiet for ``QUIET_SECONDS`` (waiters touch it again and again), at
    most ``STEP_ASIDE_SECONDS``, since SQLite's lock is not fair. Each chunk's own
    transaction is a savepoint in the span. Made in the writer thread (its connection), with
    a page cache of ``cache_mb`` for that connection."""

    POLL_SECONDS = 0.1
    QUIET_SECONDS = 0.5
    STEP_ASIDE_SECONDS = 3.0

    def __init__(self, *, seconds: float, cache_mb: int, flag: Path) -> None:
        self._seconds, self._flag = seconds, flag
        self._atomic: transaction.Atomic | None = None
        self._began, self._stamp = 0.0, 0
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA cache_size = -{int(cache_mb) * 1024}")

    def open(self) -> None:
        """Begin (its BEGIN, like any, announces itself while it waits: two imports take
        turns)."""
        if self._atomic is not None:
            return
        atomic = transaction.atomic()
        atomic.__enter__()
        self._atomic = atomic
        self._began, self._stamp = time.monotonic(), wanted_stamp(self._flag)

    def due(self) -> bool:
        """Is it time to commit?"""
        if self._atomic is None:
            return False
        return self._wanted() or time.monotonic() - self._began >= self._seconds

    def _wanted(self) -> bool:
        return wanted_stamp(self._flag) != self._stamp

    def commit(self) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is None:
            return
        atomic.__exit__(None, None, None)
        if self._wanted():  # also a wish made while the commit ran
            self._step_aside()

    def _step_aside(self) -> None:
        end = time.monotonic() + self.STEP_ASIDE_SECONDS
        stamp = wanted_stamp(self._flag)
        while time.monotonic() < end:
            time.sleep(self.QUIET_SECONDS)
            if (now := wanted_stamp(self._flag)) == stamp:
                return
            stamp = now

    def rollback(self) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is not None:
            error = RuntimeError("the span is rolled back")
            atomic.__exit__(RuntimeError, error, None)


class WriterStopped(Exception):
    """A writer asked the pipeline to stop (the job was cancelled)."""


class ChunkWriters(Generic[Item]):
    """``threads`` threads applying ``write(number, item)`` to submitted items, numbered in
    submission order. ``write`` returns False to stop the pipeline; an exception in any
    thread stops it too and is raised again by ``submit`` or ``close`` in the caller.

    Memory stays bounded: the caller calls ``reserve`` before making an item, so at most
    ``threads`` items are being written and one more is made or waits. Each thread closes its
    database connections when it ends. ``idle`` is called while the caller waits (a job's
    pulse: it may raise to stop).

    Leaving the ``with`` block by an exception (a cancellation, say) stops the threads at
    once: the statements they are running are interrupted, so their transactions roll back.
    """

    def __init__(
        self,
        write: Callable[[int, Item], bool],
        *,
        threads: int,
        idle: Callable[[], None] = lambda: None,
        span: Callable[[], Span] | None = None,
    ) -> None:
        self._write = write
        self._idle = idle
        self._span = span
        self._connections: list[BaseDatabaseWrapper] = []  # each thread's, to interrupt
        self._items: queue.Queue[tuple[int, Item] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._submitted = 0
        self._room = threading.Semaphore(threads + 1)
        self._threads = [
            threading.Thread(target=self._run, name=f"upload-writer-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        self._connections.append(connections[DEFAULT_DB_ALIAS])
        span: Span | None = None
        failed = False
        try:
            span = self._span() if self._span is not None else None
            while (entry := self._next(span)) is not None:
                if self._stopped.is_set():
                    continue  # drain: the pipeline stops
                try:
                    self._write_one(span, *entry)
                except BaseException as error:  # handed to the caller
                    failed = True
                    self._fail(error)
                finally:
                    del entry
                    self._room.release()
        except BaseException as error:
            failed = True
            self._fail(error)
        finally:
            self._end(span, failed=failed)

    def _write_one(self, span: Span | None, number: int, item: Item) -> None:
        if span is not None:
            span.open()
        if not self._write(number, item):
            self._stopped.set()
        elif span is not None and span.due():
            span.commit()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._stopped.set()

    def _end(self, span: Span | None, *, failed: bool) -> None:
        """The thread's last span committed (rolled back after an error); its connection
        closed."""
        try:
            if span is not None:
                span.rollback() if failed else span.commit()
        except BaseException as error:
            self._fail(error)
        finally:
            connections.close_all()

    def _next(self, span: Span | None) -> tuple[int, Item] | None:
        """The next item; while it is awaited, an open span still commits when it is due."""
        if span is None:
            return self._items.get()
        while True:
            try:
                return self._items.get(timeout=Span.POLL_SECONDS)
            except queue.Empty:
                if span.due():
                    span.commit()

    def reserve(self) -> bool:
        """Wait until there is room for one more item; False once the pipeline has stopped."""
        while not self._stopped.is_set():
            if self._room.acquire(timeout=0.2):
                return True
            self._idle()
        self._raise_error()
        return False

    def submit(self, item: Item) -> bool:
        """Queue ``item``; False once the pipeline has stopped (then nothing is queued)."""
        entry = (self._submitted, item)
        while not self._stopped.is_set():
            try:
                self._items.put(entry, timeout=0.2)
            except queue.Full:
                self._idle()
                continue
            self._submitted += 1
            return True
        self._raise_error()
        return False

    def close(self) -> bool:
        """Wait for every queued item; True when all were written, False when stopped."""
        self._join()
        self._raise_error()
        return not self._stopped.is_set()

    def _join(self) -> None:
        for _ in self._threads:
            self._items.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def __enter__(self) -> ChunkWriters[Item]:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if not self._threads:
            return
        if kind is None:  # left without close() (a writer stopped the pipeline): let the
            self._join()  # threads end as they do, their last span committed
            self._raise_error()
            return
        self._stopped.set()  # an error in the caller: stop without writing more
        self._interrupt_until_stopped()

    def _interrupt_until_stopped(self) -> None:
        """End the threads, interrupting their running statements until they are done (a
        statement begun after one interrupt is caught by the next)."""
        ends = len(self._threads)
        while ends or any(thread.is_alive() for thread in self._threads):
            for wrapper in self._connections:
                _statement_interrupt(wrapper)
            if ends:
                try:
                    self._items.put(None, timeout=0.1)
                    ends -= 1
                except queue.Full:
                    pass
            else:
                for thread in self._threads:
                    thread.join(timeout=0.1 / len(self._threads))
        self._threads = []

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def _statement_interrupt(wrapper: BaseDatabaseWrapper) -> None:
    """Interrupt the statement running on ``wrapper``'s connection, from another thread: it
    fails with an error and its transaction rolls back. Nothing if none is running."""
    raw = wrapper.connection
    if raw is None:
        return
    with contextlib.suppress(Exception):  # the connection may be closing: nothing to stop
        if wrapper.vendor == "sqlite":
            raw.interrupt()
        else:
            getattr(raw, "cancel_safe", raw.cancel)()
