"""Committing an upload's chunks at once: event ids in file order, errors handed back, and
exact resume points."""

from __future__ import annotations

import random
import threading

from hypothesis import given
from hypothesis import strategies as st

from uploads.pipeline import _parts, _ranges_merged
from uploads.reading import Record
from uploads.writers import ChunkWriters, Turnstile


def test_turnstile_lets_chunks_through_in_number_order_whatever_order_they_arrive() -> None:
    turnstile = Turnstile()
    passed: list[int] = []

    def chunk(number: int, arrived: threading.Event) -> None:
        arrived.set()
        with turnstile.turn(number):
            passed.append(number)

    # Later chunks arrive first: each thread starts once the one before it is at the
    # turnstile. Chunk 2 never enters (all its rows were duplicates).
    threads: dict[int, threading.Thread] = {}
    for number in (4, 3, 1, 0):
        arrived = threading.Event()
        threads[number] = threading.Thread(target=chunk, args=(number, arrived), daemon=True)
        threads[number].start()
        assert arrived.wait(timeout=5)
        if number != 0:
            assert passed == []  # nobody gets through before chunk 0
    for number in (0, 1):
        threads[number].join(timeout=5)
        assert not threads[number].is_alive()
    assert passed == [0, 1]
    assert threads[3].is_alive() and threads[4].is_alive()  # 3 and 4 wait for 2
    turnstile.done(2)
    for thread in threads.values():
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert passed == [0, 1, 3, 4]


def test_writers_stop_on_the_first_error_and_hand_it_to_the_caller() -> None:
    written: list[int] = []

    def write(number: int, item: int) -> bool:
        if item == 3:
            raise ValueError("chunk 3 failed")
        written.append(item)
        return True

    writers: ChunkWriters[int] = ChunkWriters(write, threads=2)
    raised = None
    try:
        for item in range(100):
            if not writers.submit(item):
                break
        writers.close()
    except ValueError as error:
        raised = error
    assert str(raised) == "chunk 3 failed"
    assert 3 not in written and len(written) < 99  # it stopped, not only skipped the one


@given(
    total=st.integers(1, 60),
    first_size=st.integers(1, 9),
    second_size=st.integers(1, 9),
    committed_share=st.randoms(use_true_random=False),
)
def test_a_retried_run_imports_exactly_the_records_no_chunk_committed(
    total: int, first_size: int, second_size: int, committed_share: random.Random
) -> None:
    """A first run commits some of its chunks, in any order (chunks commit at once), then
    dies; the retry, with another chunk size, commits the rest: every record exactly once."""
    records = [Record(line, []) for line in range(total)]
    ranges: list[list[int]] = []
    for start in range(0, total, first_size):
        if committed_share.random() < 0.5:
            merged = _ranges_merged(ranges, start, min(start + first_size, total))
            assert merged is not None
            ranges = merged
    committed = [(low, high) for low, high in ranges]
    imported = [record.line for low, high in committed for record in records[low:high]]
    for position in range(0, total, second_size):
        chunk = records[position : position + second_size]
        for start, part, done in _parts(position, chunk, committed):
            assert [record.line for record in part] == list(range(start, start + len(part)))
            if not done:
                imported += [record.line for record in part]
                merged = _ranges_merged(ranges, start, start + len(part))
                assert merged is not None  # never committed twice
                ranges = merged
    assert sorted(imported) == list(range(total))
    assert ranges == [[0, total]]
    assert _ranges_merged(ranges, 0, 1) is None
