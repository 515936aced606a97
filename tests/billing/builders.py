"""Billing objects for tests, including the permission matrix's BUILDERS."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from billing import services
from billing.models import CreditGrant, Invoice, Price, Subscription
from tests.factories import CustomerFactory, MeterFactory


def build_price(world: Any = None) -> Price:
    meter = world.get("meter") if world is not None else MeterFactory.create()
    return services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.PER_UNIT,
        meter=meter,
        unit_amount_decimal=Decimal(5),
    )


def build_subscription(world: Any = None) -> Subscription:
    customer = world.get("customer") if world is not None else CustomerFactory.create()
    price = world.get("price") if world is not None else build_price()
    return services.subscription_create(
        actor=None,
        customer=customer,
        items=[services.ItemInput(price=price)],
        interval="month",
    )


def build_invoice(world: Any = None) -> Invoice:
    subscription = world.get("subscription") if world is not None else build_subscription()
    start = subscription.start_date
    return Invoice.objects.create(
        customer=subscription.customer,
        subscription=subscription,
        currency=subscription.currency,
        period_start=start,
        period_end=start + timedelta(days=30),
        finalize_after=start + timedelta(days=30, hours=1),
    )


def build_grant(world: Any = None) -> CreditGrant:
    customer = world.get("customer") if world is not None else CustomerFactory.create()
    return services.credit_grant_create(
        actor=None, customer=customer, amount=1000, currency="usd", now=timezone.now()
    )
