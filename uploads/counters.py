"""Identical-row counters: how many rows with the same content key came before each row in
the file, the number a derived identifier ends with (``uploads.rows``). In memory for the
usual file (``OccurrenceCounter``), worked out on disk in an extra pass for one too large to
remember its keys (``ExternalCounter``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

MAX_RUN_KEYS = 4 * 1024 * 1024  # keys in one sorted run of the identical-row counter


class OccurrenceCounter:
    """How many identical rows (by content key) came before each row in the file.

    Memory: 8 bytes per distinct row in sorted numpy runs, merged like a binary counter up to
    ``max_run_keys`` keys a run (a merge never needs more than 32 MB beside them), plus
    an exact count only for the rare keys that do repeat.
    """

    def __init__(self, *, max_run_keys: int = MAX_RUN_KEYS) -> None:
        self._max_run_keys = max_run_keys
        self._runs: list[np.ndarray] = []
        self._repeats: dict[int, int] = {}

    def _seen(self, keys: np.ndarray) -> np.ndarray:
        seen = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            positions = np.searchsorted(run, keys)
            positions[positions == len(run)] = len(run) - 1
            seen |= run[positions] == keys
        return seen

    def count(self, keys: Sequence[int] | np.ndarray) -> list[int]:
        """Occurrences before each key, in order; then remembers them."""
        array = np.asarray(keys, dtype=np.uint64)
        if not len(array):
            return []
        # Group equal keys: a key's occurrences in this chunk are numbered in file order
        # (a stable sort keeps it), after those counted in earlier chunks.
        order = np.argsort(array, kind="stable")
        ordered = array[order]
        starts, sizes = _equal_runs(ordered)
        unique = ordered[starts]
        seen = self._seen(unique)
        before = np.zeros(len(unique), dtype=np.int64)
        for group in np.flatnonzero(seen).tolist():  # rare: keys met in earlier chunks
            before[group] = self._repeats.get(int(unique[group]), 1)
        group_of = np.repeat(np.arange(len(unique)), sizes)
        occurrences = np.empty(len(array), dtype=np.int64)
        occurrences[order] = before[group_of] + np.arange(len(array)) - starts[group_of]
        after = before + sizes
        for group in np.flatnonzero(after > 1).tolist():  # rare: keys that repeat
            self._repeats[int(unique[group])] = int(after[group])
        fresh = unique[~seen]  # sorted, distinct
        if len(fresh):
            self._runs.append(fresh)
            while (
                len(self._runs) > 1
                and len(self._runs[-2]) <= 2 * len(self._runs[-1])
                and len(self._runs[-2]) + len(self._runs[-1]) <= self._max_run_keys
            ):
                # Runs never share keys, so a concatenation sorted in place is their union;
                # np.union1d would need several temporary copies (5M rows: 420 MB peak).
                last = self._runs.pop()
                merged = np.concatenate((self._runs[-1], last))
                del last
                self._runs[-1] = merged
                merged.sort()
        return occurrences.tolist()


def _equal_runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal values starts in sorted ``ordered``, and its length."""
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return starts, np.diff(np.r_[starts, len(ordered)])


class Counter(Protocol):
    def count(self, keys: Sequence[int] | np.ndarray) -> list[int]: ...


class ExternalCounter:
    """``OccurrenceCounter``'s answers for a file too large to remember its keys in memory,
    worked out on disk in an extra pass: memory stays bounded whatever the file's size.

    The extra pass makes the same ``count`` calls as the import will, with a ``recorder``:
    it writes each key with its position (the number of keys before it) into one of 256
    bucket files by the key's first byte. ``finish`` sorts each bucket by (key, position),
    numbers the repeats, and files the positions of repeated keys (the only ones whose
    occurrence is not 0) by position range. Then ``count`` answers in order from those
    files. Disk: 16 bytes per key while sorting, 16 per repeated row after.
    """

    _BUCKETS = 256

    def __init__(self, folder: Path, *, range_size: int = 1 << 20) -> None:
        self._folder = folder
        self._range_size = range_size  # positions per file of repeats
        self._position = 0  # keys counted so far, for the recorder and the reader alike
        self._buckets = [folder / f"keys-{n:03d}.bin" for n in range(self._BUCKETS)]
        self._loaded: tuple[int, tuple[np.ndarray, np.ndarray]] = (-1, (np.empty(0), np.empty(0)))
        self.recorder = _KeyRecorder(self)

    def finish(self, *, pulse: Callable[[], None] = lambda: None) -> None:
        """After the extra pass: number the repeats, file them by position range. ``pulse``
        is called before each bucket (a job's heartbeat, see ``uploads.pulse``)."""
        for path in self._buckets:
            pulse()
            if not path.exists():
                continue
            pairs = np.fromfile(path, dtype=np.uint64).reshape(-1, 2)
            path.unlink()
            order = np.lexsort((pairs[:, 1], pairs[:, 0]))  # by key, then position
            keys, positions = pairs[order, 0], pairs[order, 1]
            del pairs, order
            starts, sizes = _equal_runs(keys)
            ranks = np.arange(len(keys)) - np.repeat(starts, sizes)
            repeated = ranks > 0
            found = np.stack((positions[repeated], ranks[repeated].astype(np.uint64)), axis=1)
            for block in np.unique(found[:, 0] // self._range_size).tolist():
                in_block = found[found[:, 0] // self._range_size == block]
                with (self._folder / f"repeats-{block}.bin").open("ab") as out:
                    in_block.tofile(out)
        self._position = 0

    def _record(self, keys: np.ndarray) -> list[int]:
        positions = np.arange(self._position, self._position + len(keys), dtype=np.uint64)
        self._position += len(keys)
        pairs = np.stack((keys, positions), axis=1)
        first_bytes = (keys >> np.uint64(56)).astype(np.int64)
        for bucket in np.unique(first_bytes).tolist():
            with self._buckets[bucket].open("ab") as out:
                pairs[first_bytes == bucket].tofile(out)
        return [0] * len(keys)

    def count(self, keys: Sequence[int] | np.ndarray) -> list[int]:
        """Occurrences before each key, in order, as worked out by the extra pass."""
        start, end = self._position, self._position + len(keys)
        self._position = end
        occurrences = np.zeros(len(keys), dtype=np.int64)
        size = self._range_size
        for block in range(start // size, (end - 1) // size + 1 if end else 0):
            positions, ranks = self._repeats_in(block)
            low, high = np.searchsorted(positions, [start, end])
            occurrences[positions[low:high].astype(np.int64) - start] = ranks[low:high]
        return occurrences.tolist()

    def _repeats_in(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, ranks) of the repeated keys in one position range, by position."""
        if self._loaded[0] != block:
            path = self._folder / f"repeats-{block}.bin"
            pairs = np.fromfile(path, dtype=np.uint64).reshape(-1, 2) if path.exists() else None
            if pairs is None:
                pairs = np.empty((0, 2), dtype=np.uint64)
            pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
            self._loaded = (block, (pairs[:, 0].copy(), pairs[:, 1].astype(np.int64)))
        return self._loaded[1]


class _KeyRecorder:
    """The extra pass's counter: records keys, answers 0 (its identifiers are not used)."""

    def __init__(self, counter: ExternalCounter) -> None:
        self._counter = counter

    def count(self, keys: Sequence[int] | np.ndarray) -> list[int]:
        return self._counter._record(np.asarray(keys, dtype=np.uint64))
