"""System check for the portal-wide invoice finalization grace period."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

MAX_GRACE_MINUTES = 72 * 60


@checks.register()
def grace_period_check(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    minutes = getattr(settings, "BILLING_GRACE_PERIOD_MINUTES", 60)
    if not isinstance(minutes, int) or not 0 <= minutes <= MAX_GRACE_MINUTES:
        return [
            checks.Error(
                f"BILLING_GRACE_PERIOD_MINUTES is {minutes!r}; it must be a whole number of "
                f"minutes from 0 to {MAX_GRACE_MINUTES} (72 hours), as on Stripe.",
                id="billing.E001",
            )
        ]
    return []
