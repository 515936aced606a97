"""The read side: summaries, page selectors, daily and monthly rollups."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _days_go_stale(sender: Any, *, change: Any, **kwargs: Any) -> None:
    from usage.rollups import usage_days_mark_stale

    usage_days_mark_stale(keys=change.days)


class UsageConfig(AppConfig):
    name = "usage"

    def ready(self) -> None:
        from events.signals import usage_changed

        # Inside the writer's transaction: the stale markers commit with the events.
        usage_changed.connect(_days_go_stale, dispatch_uid="usage.days_go_stale")
