"""Usage alerts and their webhook delivery."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _evaluate_after_commit(sender: Any, *, change: Any, **kwargs: Any) -> None:
    from alerts.services import usage_alerts_schedule

    usage_alerts_schedule(pairs=change.pairs)


class AlertsConfig(AppConfig):
    name = "alerts"

    def ready(self) -> None:
        from events.signals import usage_changed

        usage_changed.connect(_evaluate_after_commit, dispatch_uid="alerts.evaluate")
