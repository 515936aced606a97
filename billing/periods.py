"""Billing periods: interval x count from an anchor, right across month ends.

Every period boundary is computed from the anchor itself, never from the previous
boundary, so an anchor on the 31st bills on the last day of shorter months (30 April,
28 or 29 February) and comes back to the 31st in the months that have one. Same for
29 February anchors in yearly plans. Times keep the anchor's time of day, in UTC.

A subscription's periods are the anchor's grid clipped to the subscription's life:
the first period starts at the subscription's (possibly backdated) start and runs to the
next anchor boundary; the last one ends when the subscription ends (cancel at period end).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Interval(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


# Stripe: at most three years between invoices.
MAX_INTERVAL_COUNT: dict[Interval, int] = {
    Interval.DAY: 1095,
    Interval.WEEK: 156,
    Interval.MONTH: 36,
    Interval.YEAR: 3,
}


class PeriodError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # inclusive
    end: datetime  # exclusive

    def __contains__(self, moment: object) -> bool:
        return isinstance(moment, datetime) and self.start <= moment < self.end

    @property
    def length(self) -> timedelta:
        return self.end - self.start


def interval_validate(interval: Interval, count: int) -> None:
    limit = MAX_INTERVAL_COUNT[Interval(interval)]
    if count < 1 or count > limit:
        raise PeriodError(
            f"Bill every 1 to {limit} {interval}s: the longest billing interval is 3 years."
        )


def shortest_period(interval: Interval, count: int) -> timedelta:
    """The shortest period this interval can produce (28-day Februaries, 365-day years)."""
    days = {Interval.DAY: 1, Interval.WEEK: 7, Interval.MONTH: 28, Interval.YEAR: 365}
    return timedelta(days=days[Interval(interval)] * count)


def boundary(anchor: datetime, interval: Interval, steps: int) -> datetime:
    """The anchor moved by ``steps`` intervals (negative goes back)."""
    interval = Interval(interval)
    if interval is Interval.DAY:
        return anchor + timedelta(days=steps)
    if interval is Interval.WEEK:
        return anchor + timedelta(weeks=steps)
    months = steps * (12 if interval is Interval.YEAR else 1)
    year, month_index = divmod(anchor.month - 1 + months, 12)
    year += anchor.year
    month = month_index + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_containing(*, anchor: datetime, interval: Interval, count: int, at: datetime) -> Period:
    """The period of the anchor's grid with start <= at < end."""
    interval = Interval(interval)
    if interval in (Interval.DAY, Interval.WEEK):
        unit = timedelta(days=count * (7 if interval is Interval.WEEK else 1))
        index = (at - anchor) // unit
    else:
        months = (at.year - anchor.year) * 12 + at.month - anchor.month
        index = months // (count * (12 if interval is Interval.YEAR else 1))
    # The estimate can be one off either way around the anchor's day and time of day.
    while boundary(anchor, interval, index * count) > at:
        index -= 1
    while boundary(anchor, interval, (index + 1) * count) <= at:
        index += 1
    return Period(
        boundary(anchor, interval, index * count), boundary(anchor, interval, (index + 1) * count)
    )


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a subscription bills: its grid, and the span of its life that counts."""

    anchor: datetime
    interval: Interval
    count: int
    start: datetime  # the (backdated) start: usage before it is not billed
    ends_at: datetime | None = None  # set by cancellation at period end

    def period_at(self, at: datetime) -> Period | None:
        """The billing period covering ``at``, or None outside the subscription's life."""
        if at < self.start or (self.ends_at is not None and at >= self.ends_at):
            return None
        grid = period_containing(
            anchor=self.anchor, interval=self.interval, count=self.count, at=at
        )
        end = grid.end if self.ends_at is None else min(grid.end, self.ends_at)
        return Period(max(grid.start, self.start), end)

    def periods(self, *, after: datetime | None = None) -> Iterator[Period]:
        """Every period in order, from the one covering ``after`` (or the first)."""
        period = self.period_at(max(after, self.start) if after else self.start)
        while period is not None:
            yield period
            period = self.period_at(period.end)

    def ended_periods(self, *, now: datetime, after: datetime | None = None) -> Iterator[Period]:
        """Periods that have closed by ``now``, from the one covering ``after``."""
        for period in self.periods(after=after):
            if period.end > now:
                return
            yield period
