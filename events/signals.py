"""What the write side announces: the usage that one ingestion or cancellation changed.

The ingestion core does not import its readers. It sends ``usage_changed`` once per
transaction, inside it, with a ``UsageChange``; ``usage`` (daily rollups go stale in the same
transaction) and ``alerts`` (evaluated once it commits) subscribe in their ``apps.py``.
Receivers run inside the writer's transaction: what they write commits or rolls back with
the events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.dispatch import Signal

usage_changed = Signal()


@dataclass(frozen=True, slots=True)
class UsageChange:
    # (meter pk, customer pk) whose usage grew: what alerts evaluate. Empty for cancellations.
    pairs: frozenset[tuple[int, int]]
    # (meter pk, UTC day) whose hourly rollups changed: what daily rollups recompute.
    days: frozenset[tuple[int, dt.date]]


def utc_date(moment: dt.datetime | dt.date) -> dt.date:
    """The UTC calendar day of a moment (a date stays as it is)."""
    if isinstance(moment, dt.datetime):
        return moment.astimezone(dt.UTC).date()
    return moment


def usage_changed_announce(
    *,
    pairs: Iterable[tuple[int, int]] = (),
    days: Iterable[tuple[int, dt.datetime | dt.date]] = (),
) -> UsageChange | None:
    """Send ``usage_changed`` for what a transaction changed; nothing when it changed nothing."""
    change = UsageChange(
        pairs=frozenset(pairs),
        days=frozenset((meter_id, utc_date(moment)) for meter_id, moment in days),
    )
    if not change.pairs and not change.days:
        return None
    usage_changed.send(sender=UsageChange, change=change)
    return change
