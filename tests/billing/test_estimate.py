"""The upcoming-invoice estimate: usage from the summaries selector, priced, with credits."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine

from billing import services
from billing.models import CreditGrant, Price, Subscription
from billing.pricing import Tier
from billing.selectors import subscription_estimate
from customers.models import Customer
from meters.models import Meter
from tests.billing.conftest import record_usage
from tests.factories import CustomerFactory, MeterFactory

pytestmark = pytest.mark.django_db

D = Decimal
SIMPLE_TIERS = [Tier(5, D(700)), Tier(10, D(650)), Tier(None, D(600))]


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def metered(meter: Meter, model: str, **kwargs: object) -> Price:
    return services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=model,
        meter=meter,
        **kwargs,  # type: ignore[arg-type]
    )


def subscribe(customer: Customer, *prices: Price, **kwargs: object) -> Subscription:
    return services.subscription_create(
        actor=None,
        customer=customer,
        items=[services.ItemInput(price=p) for p in prices],
        interval="month",
        start_date=utc(2025, 3, 1),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def meter() -> Meter:
    return MeterFactory.create(aggregation_formula=Meter.Formula.SUM)


@pytest.fixture
def customer() -> Customer:
    return CustomerFactory.create()


@time_machine.travel(utc(2025, 3, 16, 12), tick=False)
def test_estimate_prices_the_period_usage_with_tiers_and_projects_it(
    meter: Meter, customer: Customer
) -> None:
    price = metered(meter, Price.Model.GRADUATED, tiers=SIMPLE_TIERS)
    subscription = subscribe(customer, price)
    record_usage(meter, customer, 3, utc(2025, 3, 2))
    record_usage(meter, customer, 4, utc(2025, 3, 10, 17, 45))
    record_usage(meter, customer, 100, utc(2025, 2, 27))  # before the start: not billed

    estimate = subscription_estimate(subscription=subscription, now=utc(2025, 3, 16, 12))
    assert estimate is not None
    assert (estimate.period.start, estimate.period.end) == (utc(2025, 3, 1), utc(2025, 4, 1))
    (row,) = estimate.lines
    assert row.line.quantity == 7
    assert row.line.amount == 5 * 700 + 2 * 650
    assert [(use.number, use.quantity) for use in row.line.priced.tiers] == [(1, 5), (2, 2)]
    assert estimate.subtotal == estimate.total == 4800
    assert estimate.credits_applied == 0
    # Half the 31-day period has elapsed: at this rate the period ends at 14 units.
    assert estimate.elapsed_fraction == D("0.5")
    assert row.projected is not None and row.projected.quantity == 14
    assert estimate.projected_subtotal == 5 * 700 + 5 * 650 + 4 * 600


@time_machine.travel(utc(2025, 3, 16, 12), tick=False)
def test_zero_usage_bills_the_first_tiers_flat_amount(meter: Meter, customer: Customer) -> None:
    price = metered(
        meter, Price.Model.VOLUME, tiers=[Tier(5, D(500), D(1000)), Tier(None, D(100), D(5000))]
    )
    subscription = subscribe(customer, price)
    estimate = subscription_estimate(subscription=subscription, now=utc(2025, 3, 16, 12))
    assert estimate is not None
    assert estimate.lines[0].line.quantity == 0
    assert estimate.subtotal == 1000


@time_machine.travel(utc(2025, 3, 16, 12), tick=False)
def test_negative_usage_bills_as_zero_and_package_rounds_up(customer: Customer) -> None:
    meter = MeterFactory.create()
    price = metered(meter, Price.Model.PACKAGE, unit_amount_decimal=D(1000), package_size=60)
    subscription = subscribe(customer, price)
    record_usage(meter, customer, 150, utc(2025, 3, 5))
    estimate = subscription_estimate(subscription=subscription, now=utc(2025, 3, 16, 12))
    assert estimate is not None
    assert estimate.subtotal == 3000  # 150 minutes -> 3 packages of 60 x $10
    record_usage(meter, customer, -400, utc(2025, 3, 6))
    estimate = subscription_estimate(subscription=subscription, now=utc(2025, 3, 16, 12))
    assert estimate is not None
    assert estimate.lines[0].line.quantity == 0
    assert estimate.subtotal == 0


@time_machine.travel(utc(2025, 3, 16, 12), tick=False)
def test_count_and_last_meters_and_a_licensed_fee(customer: Customer) -> None:
    calls = MeterFactory.create(aggregation_formula=Meter.Formula.COUNT)
    seats = MeterFactory.create(aggregation_formula=Meter.Formula.LAST)
    count_price = metered(calls, Price.Model.PER_UNIT, unit_amount_decimal=D("0.1"))
    last_price = metered(seats, Price.Model.PER_UNIT, unit_amount_decimal=D(1500))
    fee = services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.LICENSED,
        pricing_model=Price.Model.PER_UNIT,
        unit_amount_decimal=D(20000),
    )
    subscription = subscribe(customer, count_price, last_price, fee)
    for day in (2, 3, 4, 5, 6):
        record_usage(calls, customer, 1, utc(2025, 3, day))
    record_usage(seats, customer, 12, utc(2025, 3, 3))
    record_usage(seats, customer, 9, utc(2025, 3, 9))
    estimate = subscription_estimate(subscription=subscription, now=utc(2025, 3, 16, 12))
    assert estimate is not None
    amounts = [row.line.amount for row in estimate.lines]
    assert [row.line.quantity for row in estimate.lines] == [5, 9, 1]
    # 5 x 0.1 cent = 0.5 cent, rounded half-up to 1 cent.
    assert amounts == [1, 9 * 1500, 20000]
    # "last" keeps its value in the projection; count doubles at half time.
    assert [row.projected.quantity for row in estimate.lines if row.projected] == [10, 9, 1]


@time_machine.travel(utc(2025, 3, 16, 12), tick=False)
def test_credits_apply_in_stripes_order(meter: Meter, customer: Customer) -> None:
    price = metered(meter, Price.Model.PER_UNIT, unit_amount_decimal=D(100))
    other_meter_price = metered(
        MeterFactory.create(), Price.Model.PER_UNIT, unit_amount_decimal=D(1)
    )
    subscription = subscribe(customer, price)
    record_usage(meter, customer, 50, utc(2025, 3, 2))  # $50.00
    now = utc(2025, 3, 16, 12)
    period_start = utc(2025, 3, 1)

    def grant(
        amount: int,
        *,
        currency: str = "usd",
        effective_at: datetime | None = period_start,
        **kwargs: object,
    ) -> CreditGrant:
        return services.credit_grant_create(
            actor=None,
            customer=customer,
            amount=amount,
            currency=currency,
            now=now,
            effective_at=effective_at,
            **kwargs,  # type: ignore[arg-type]
        )

    paid_late = grant(1000, priority=50, category=CreditGrant.Category.PAID)
    promo_same = grant(1000, priority=50, category=CreditGrant.Category.PROMOTIONAL)
    expiring = grant(1000, priority=50, expires_at=utc(2025, 5, 1))
    first = grant(1000, priority=10)
    grant(1000, priority=0, prices=[other_meter_price])  # scoped to another price
    grant(1000, priority=0, expires_at=utc(2025, 3, 20))  # expires before the period ends
    grant(1000, priority=0, currency="eur")  # another currency
    grant(1000, priority=0, effective_at=utc(2025, 4, 2), expires_at=None)  # not yet effective

    estimate = subscription_estimate(subscription=subscription, now=now)
    assert estimate is not None
    assert estimate.subtotal == 5000
    assert estimate.credits_applied == 4000
    assert estimate.total == 1000
    from billing.selectors import (
        credit_grant_balances,
        credits_allocate,
        customer_credit_grants,
        lines_compute,
    )

    grants = list(customer_credit_grants(customer=customer))
    lines = lines_compute(subscription=subscription, period=estimate.period)
    order = [
        app.grant.pk
        for app in credits_allocate(
            lines=lines,
            grants=grants,
            balances=credit_grant_balances(grants=grants),
            period_end=estimate.period.end,
            currency="usd",
        )
    ]
    # priority 10; then priority 50: earlier expiry, then promotional, then paid.
    assert order == [first.pk, expiring.pk, promo_same.pk, paid_late.pk]
