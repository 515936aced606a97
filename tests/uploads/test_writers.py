"""The turnstile that keeps event ids in file order while chunks commit at once."""

from __future__ import annotations

import threading
import time

from uploads.writers import ChunkWriters, Turnstile


def test_turnstile_lets_chunks_through_in_number_order_whatever_order_they_arrive() -> None:
    turnstile = Turnstile()
    passed: list[int] = []

    def chunk(number: int, delay: float) -> None:
        time.sleep(delay)
        with turnstile.turn(number):
            passed.append(number)

    # Later chunks arrive first; chunk 2 never enters (all its rows were duplicates).
    threads = [
        threading.Thread(target=chunk, args=(number, delay))
        for number, delay in ((4, 0.0), (3, 0.05), (1, 0.1), (0, 0.2))
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    assert passed == [0, 1]  # 3 and 4 wait for 2
    turnstile.done(2)
    for thread in threads:
        thread.join(timeout=5)
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
