"""SQLite's write lock: a connection that waits for it says so, again and again, so that an
import's long transaction steps aside (``usage_portal.sqlite_lock``)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from django.db import connection, connections

from customers.models import Customer
from usage_portal.sqlite_lock import wanted_flag, wanted_stamp, write_lock_patience

pytestmark = pytest.mark.django_db(transaction=True)


def _holder() -> sqlite3.Connection:
    """Another connection, holding the write lock."""
    holder = sqlite3.connect(str(connection.settings_dict["NAME"]), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def _write_in_thread(name: str, patience: float = 0.0) -> threading.Thread:
    def write() -> None:
        try:
            with write_lock_patience(patience):
                Customer.objects.create(external_id=name)
        finally:
            connections.close_all()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def _stamps_while(thread: threading.Thread, seconds: float) -> set[int]:
    flag = wanted_flag()
    assert flag is not None
    seen = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end and thread.is_alive():
        seen.add(wanted_stamp(flag))
        time.sleep(0.05)
    return seen


def test_a_write_waiting_for_the_lock_keeps_saying_so_and_goes_through_when_it_is_free() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's one write lock")
    holder = _holder()
    writer = _write_in_thread("cus_waiting")
    try:
        seen = _stamps_while(writer, 1.5)
        assert writer.is_alive(), "the write did not wait for the lock"
        assert len(seen) >= 3, "the waiting write did not keep raising the flag"
    finally:
        holder.execute("COMMIT")
        holder.close()
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert Customer.objects.filter(external_id="cus_waiting").exists()


def test_a_patient_write_waits_quietly_first() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's one write lock")
    flag = wanted_flag()
    assert flag is not None
    before = wanted_stamp(flag)
    holder = _holder()
    writer = _write_in_thread("cus_patient", patience=60)
    try:
        seen = _stamps_while(writer, 1.0)
        assert writer.is_alive()
        assert seen == {before}, "a patient write raised the flag"
    finally:
        holder.execute("COMMIT")
        holder.close()
    writer.join(timeout=30)
    assert Customer.objects.filter(external_id="cus_patient").exists()
