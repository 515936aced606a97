"""This process's readings of API keys and meter event sessions, by secret digest.

The endpoint reads a key (or session) again after ``KEY_CACHE_SECONDS``. Every write checks
that the key is not revoked nor its user deactivated: the inbox's in its own statement,
every other POST by a query first. So a revoked key changes nothing from the moment it is
revoked; its reads (and a lowered role) may go on for up to ``KEY_CACHE_SECONDS`` in other
processes. A revoke in this process forgets every reading at once.
"""

from __future__ import annotations

import time
from typing import Any

KEY_CACHE_SECONDS = 2.0
_CACHE_SIZE = 10_000
keys: dict[str, tuple[float, Any, Any]] = {}  # (read at, ApiKey, Role | None)
sessions: dict[str, tuple[float, Any, Any]] = {}  # (read at, MeterEventSession, Role | None)


def credentials_forget() -> None:
    keys.clear()
    sessions.clear()


def reading(cache: dict[str, tuple[float, Any, Any]], digest: str) -> tuple[Any, Any] | None:
    """The cached (object, role) for ``digest`` while it is fresh."""
    cached = cache.get(digest)
    if cached is None or time.monotonic() - cached[0] >= KEY_CACHE_SECONDS:
        return None
    return cached[1], cached[2]


def remember(cache: dict[str, tuple[float, Any, Any]], digest: str, found: Any, role: Any) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[digest] = (time.monotonic(), found, role)
