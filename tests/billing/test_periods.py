from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.periods import (
    Interval,
    Period,
    PeriodError,
    Schedule,
    boundary,
    interval_validate,
    period_containing,
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_anchor_on_the_31st_bills_on_the_last_day_of_shorter_months_and_comes_back() -> None:
    anchor = utc(2025, 1, 31, 9, 30)
    ends = [boundary(anchor, Interval.MONTH, k) for k in range(1, 8)]
    assert [e.date().isoformat() for e in ends] == [
        "2025-02-28",
        "2025-03-31",
        "2025-04-30",
        "2025-05-31",
        "2025-06-30",
        "2025-07-31",
        "2025-08-31",
    ]
    assert all(e.time() == anchor.time() for e in ends)


def test_leap_year() -> None:
    anchor = utc(2024, 1, 31)
    assert boundary(anchor, Interval.MONTH, 1) == utc(2024, 2, 29)
    leap_day = utc(2024, 2, 29)
    assert boundary(leap_day, Interval.YEAR, 1) == utc(2025, 2, 28)
    assert boundary(leap_day, Interval.YEAR, 4) == utc(2028, 2, 29)


def test_period_containing_month_end_cases() -> None:
    anchor = utc(2025, 1, 31)
    period = period_containing(anchor=anchor, interval=Interval.MONTH, count=1, at=utc(2025, 3, 1))
    assert period == Period(utc(2025, 2, 28), utc(2025, 3, 31))
    # Exactly on a boundary: the new period.
    period = period_containing(anchor=anchor, interval=Interval.MONTH, count=1, at=utc(2025, 2, 28))
    assert period.start == utc(2025, 2, 28)
    # Before the anchor: the grid extends backwards.
    period = period_containing(
        anchor=anchor, interval=Interval.MONTH, count=1, at=utc(2024, 12, 30, 23)
    )
    assert period == Period(utc(2024, 11, 30), utc(2024, 12, 31))


def test_quarterly_and_weekly() -> None:
    anchor = utc(2025, 1, 15)
    q = period_containing(anchor=anchor, interval=Interval.MONTH, count=3, at=utc(2025, 6, 1))
    assert q == Period(utc(2025, 4, 15), utc(2025, 7, 15))
    w = period_containing(anchor=anchor, interval=Interval.WEEK, count=2, at=utc(2025, 1, 30))
    assert w == Period(utc(2025, 1, 29), utc(2025, 2, 12))


@pytest.mark.parametrize(
    ("interval", "count", "ok"),
    [
        (Interval.MONTH, 36, True),
        (Interval.MONTH, 37, False),
        (Interval.WEEK, 156, True),
        (Interval.WEEK, 157, False),
        (Interval.YEAR, 3, True),
        (Interval.YEAR, 4, False),
        (Interval.DAY, 1095, True),
        (Interval.DAY, 1096, False),
        (Interval.DAY, 0, False),
    ],
)
def test_three_year_maximum(interval: Interval, count: int, ok: bool) -> None:
    if ok:
        interval_validate(interval, count)
    else:
        with pytest.raises(PeriodError, match="3 years"):
            interval_validate(interval, count)


def test_schedule_first_period_runs_from_start_to_the_anchor_grid() -> None:
    schedule = Schedule(
        anchor=utc(2025, 1, 1), interval=Interval.MONTH, count=1, start=utc(2025, 1, 10)
    )
    periods = list(schedule.ended_periods(now=utc(2025, 3, 1)))
    assert periods == [
        Period(utc(2025, 1, 10), utc(2025, 2, 1)),
        Period(utc(2025, 2, 1), utc(2025, 3, 1)),
    ]
    # Usage before the start is outside every period.
    assert schedule.period_at(utc(2025, 1, 9)) is None


def test_backdated_start_makes_earlier_usage_count() -> None:
    usage_at = utc(2025, 1, 5)
    not_backdated = Schedule(
        anchor=utc(2025, 1, 10), interval=Interval.MONTH, count=1, start=utc(2025, 1, 10)
    )
    backdated = Schedule(
        anchor=utc(2025, 1, 10), interval=Interval.MONTH, count=1, start=utc(2025, 1, 1)
    )
    assert not_backdated.period_at(usage_at) is None
    assert backdated.period_at(usage_at) == Period(utc(2025, 1, 1), utc(2025, 1, 10))


def test_cancel_at_period_end_stops_the_periods() -> None:
    schedule = Schedule(
        anchor=utc(2025, 1, 1),
        interval=Interval.MONTH,
        count=1,
        start=utc(2025, 1, 1),
        ends_at=utc(2025, 3, 1),
    )
    assert list(schedule.periods()) == [
        Period(utc(2025, 1, 1), utc(2025, 2, 1)),
        Period(utc(2025, 2, 1), utc(2025, 3, 1)),
    ]
    assert schedule.period_at(utc(2025, 3, 1)) is None


anchors = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 12, 31), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-2000 * 86400, max_value=2000 * 86400)
intervals = st.sampled_from(list(Interval))


@given(anchor=anchors, offset=offsets, interval=intervals, count=st.integers(1, 3))
def test_the_period_containing_a_moment_contains_it_and_periods_tile(
    anchor: datetime, offset: int, interval: Interval, count: int
) -> None:
    at = anchor + timedelta(seconds=offset)
    period = period_containing(anchor=anchor, interval=interval, count=count, at=at)
    assert period.start <= at < period.end
    following = period_containing(anchor=anchor, interval=interval, count=count, at=period.end)
    assert following.start == period.end
    if interval in (Interval.MONTH, Interval.YEAR):
        # Every boundary falls on the anchor's day, or on the month's last day if shorter.
        assert period.start.day == anchor.day or period.start.day < anchor.day
        assert period.start.time() == anchor.time()


@given(anchor=anchors, months=st.integers(0, 120))
def test_month_end_anchor_returns_to_its_day_whenever_the_month_has_it(
    anchor: datetime, months: int
) -> None:
    moved = boundary(anchor, Interval.MONTH, months)
    import calendar

    last = calendar.monthrange(moved.year, moved.month)[1]
    assert moved.day == min(anchor.day, last)
