from __future__ import annotations

from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from billing import checks  # noqa: F401  (registers the grace-period system check)
        from billing.selectors import meter_events_late
        from events.selectors import EXPLORER_STATUS_FILTERS, EventStatus

        # The event explorer's "late, not billed": billing owns the rule.
        EXPLORER_STATUS_FILTERS[EventStatus.LATE] = meter_events_late
