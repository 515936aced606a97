"""The read side's own tables: daily and monthly rollups and the meters' totals, derived from
the hourly rollups off the ingestion path (``usage/rollups.py`` explains the design).
Tables keep the names they had in ``meters``.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from customers.models import Customer
from meters.models import Meter
from usage_portal.fields import ExactDecimalField


# --- Daily rollups: the meter overview's fast path, derived from UsageRollup off the ingestion
# hot path; written only by usage/rollups.py (its docstring explains the design).
class StaleUsageDay(models.Model):
    """A (meter, UTC day) whose hourly rollups changed after its daily rows were computed.

    Appended by ingestion and cancellation in their own transaction (one row per batch and
    key, never updated: no row for concurrent writers to queue on); deleted by the refresh
    that recomputes the day. While one exists, readers use the hourly rollups for that day.
    """

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+", db_index=False)
    day = models.DateField()

    class Meta:
        db_table = "meters_staleusageday"
        indexes = [models.Index(fields=["meter", "day"], name="staleday_meter_day")]

    def __str__(self) -> str:
        return f"{self.meter_id}@{self.day} (stale)"


class MeterDailyRollup(models.Model):
    """Counted usage per (meter, customer, UTC day): the day's hourly rollups combined."""

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+", db_index=False)
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    value_sum = ExactDecimalField()
    event_count = models.BigIntegerField()
    last_value = ExactDecimalField()
    last_timestamp = models.DateTimeField()
    last_event_id = models.BigIntegerField()

    class Meta:
        db_table = "meters_meterdailyrollup"
        constraints = [
            # (meter, day) first: the overview reads a day range of one meter.
            models.UniqueConstraint(
                fields=["meter", "day", "customer"], name="dailyrollup_unique_meter_day_cust"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter_id}/{self.customer_id}@{self.day}"


class MeterMonthlyRollup(models.Model):
    """Counted usage per (meter, customer, UTC calendar month): its daily rollups combined,
    so long ranges read one row per customer-month."""

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+", db_index=False)
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    month = models.DateField()  # the first day of the month
    value_sum = ExactDecimalField()
    event_count = models.BigIntegerField()
    last_value = ExactDecimalField()
    last_timestamp = models.DateTimeField()
    last_event_id = models.BigIntegerField()

    class Meta:
        db_table = "meters_metermonthlyrollup"
        constraints = [
            models.UniqueConstraint(
                fields=["meter", "month", "customer"], name="monthlyrollup_unique_meter_month_c"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter_id}/{self.customer_id}@{self.month:%Y-%m}"


class MeterUsageTotal(models.Model):
    """A meter's usage across customers in one UTC hour or day: the overview's chart."""

    class Grain(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+", db_index=False)
    grain = models.CharField(max_length=4, choices=Grain.choices)
    start = models.DateTimeField()
    value_sum = ExactDecimalField()
    event_count = models.BigIntegerField()
    # The sum of each customer's last value in the hour or day ("last" meters).
    last_sum = ExactDecimalField()

    class Meta:
        db_table = "meters_meterusagetotal"
        constraints = [
            models.UniqueConstraint(
                fields=["meter", "grain", "start"], name="usagetotal_unique_meter_grain_start"
            ),
            models.CheckConstraint(
                condition=Q(grain__in=["hour", "day"]), name="usagetotal_grain_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter_id} {self.grain} {self.start:%Y-%m-%d %H}:00"


class UsageRefreshQueued(models.Model):
    """A daily-rollup refresh of ``meter`` is queued and has not started: the coalescing flag.

    Set after an ingestion or cancellation commits (outside that transaction, so concurrent
    imports never wait on it); only the commit that created it queues the refresh, later
    ones only note ``last_commit_at``. The refresh waits while the meter's commits keep
    coming (an import in progress: recomputing its days after every chunk would redo them
    again and again), up to ``USAGE_DAYS_REFRESH_MAX_WAIT_SECONDS`` after ``queued_at``;
    then it clears the flag before it reads the markers, so a commit after that queues the
    next one. At most one refresh per meter is queued at a time, however many chunks commit
    meanwhile; the beat sweep clears a flag whose message was lost.
    """

    meter = models.OneToOneField(Meter, on_delete=models.CASCADE, related_name="+")
    queued_at = models.DateTimeField()
    last_commit_at = models.DateTimeField()

    class Meta:
        db_table = "usage_refreshqueued"

    def __str__(self) -> str:
        return f"refresh of {self.meter_id} queued at {self.queued_at:%Y-%m-%d %H:%M:%S}"
