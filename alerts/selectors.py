"""Reads for usage alerts: the list and their triggers."""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import QuerySet

from alerts.models import UsageAlert, UsageAlertTrigger
from customers.models import Customer


def alert_list(*, status: str = "") -> QuerySet[UsageAlert]:
    alerts = UsageAlert.objects.select_related("meter", "customer").annotate(
        trigger_count=models.Count("triggers")
    )
    if status in UsageAlert.Status.values:
        alerts = alerts.filter(status=status)
    return alerts.order_by("-created", "-id")


def alert_triggers(
    *,
    alert: UsageAlert | None = None,
    customer: Customer | None = None,
    since: dt.datetime | None = None,
) -> QuerySet[UsageAlertTrigger]:
    """Triggered alerts, newest first."""
    triggers = UsageAlertTrigger.objects.select_related("alert__meter", "customer")
    if alert is not None:
        triggers = triggers.filter(alert=alert)
    if customer is not None:
        triggers = triggers.filter(customer=customer)
    if since is not None:
        triggers = triggers.filter(triggered_at__gte=since)
    return triggers.order_by("-triggered_at", "-id")


def alerts_fired_since(*, since: dt.datetime) -> int:
    """How many alerts fired since ``since``: the home page's figure."""
    return UsageAlertTrigger.objects.filter(triggered_at__gte=since).count()
