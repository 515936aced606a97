"""Prices, subscriptions and credit grants through their services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from billing import services
from billing.models import CreditTransaction, Price
from billing.pricing import Tier
from billing.selectors import credit_grant_balances, unused_credit_grant_count
from meters.models import Meter
from tests.billing.builders import build_price, build_subscription
from tests.factories import CustomerFactory, MeterFactory
from usage_portal.models import AuditEntry

pytestmark = pytest.mark.django_db

D = Decimal


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def tiered(meter: Meter, **kwargs: object) -> Price:
    return services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.GRADUATED,
        meter=meter,
        tiers=[Tier(5, D(700)), Tier(10, D(650)), Tier(None, D(600))],
        **kwargs,  # type: ignore[arg-type]
    )


def test_price_create_stores_tiers_and_audits() -> None:
    price = tiered(MeterFactory.create(), nickname="API")
    price.refresh_from_db()
    assert price.price_id.startswith("price_")
    assert price.tiers[0] == {"up_to": 5, "unit_amount_decimal": "700", "flat_amount_decimal": None}
    assert price.tiers[-1]["up_to"] == "inf"
    assert price.tier_list[1] == Tier(10, D(650))
    assert AuditEntry.objects.filter(target_type="billing.price", target_id=str(price.pk)).exists()


def test_a_deactivated_meter_cannot_take_a_price() -> None:
    meter = MeterFactory.create(status=Meter.Status.INACTIVE, deactivated_at=utc(2025, 1, 1))
    with pytest.raises(ValidationError) as info:
        build_price_for(meter)
    assert "deactivated" in str(info.value)


def build_price_for(meter: Meter) -> Price:
    return services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.PER_UNIT,
        meter=meter,
        unit_amount_decimal=D(1),
    )


def test_invalid_tiers_are_refused_by_the_service() -> None:
    with pytest.raises(ValidationError, match="ascending"):
        services.price_create(
            actor=None,
            currency="usd",
            usage_type=Price.UsageType.METERED,
            pricing_model=Price.Model.VOLUME,
            meter=MeterFactory.create(),
            tiers=[Tier(10, D(1)), Tier(10, D(1)), Tier(None, D(1))],
        )


def test_licensed_prices_are_flat_fees_without_meter() -> None:
    with pytest.raises(ValidationError):
        services.price_create(
            actor=None,
            currency="usd",
            usage_type=Price.UsageType.LICENSED,
            pricing_model=Price.Model.PER_UNIT,
            meter=MeterFactory.create(),
            unit_amount_decimal=D(20000),
        )
    price = services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.LICENSED,
        pricing_model=Price.Model.PER_UNIT,
        unit_amount_decimal=D(20000),
        nickname="Platform fee",
    )
    assert price.meter is None


def test_a_change_makes_a_new_price_and_archives_the_old_one() -> None:
    meter = MeterFactory.create()
    old = tiered(meter)
    new = tiered(meter, replaces=old)
    old.refresh_from_db()
    assert not old.active
    assert old.replaced_by == new
    assert new.active
    with pytest.raises(ValidationError, match="newer version"):
        tiered(meter, replaces=old)
    with pytest.raises(ValidationError, match="replaced"):
        services.price_unarchive(price=old, actor=None)


def test_subscription_refuses_mixed_currencies_and_archived_prices() -> None:
    usd = build_price()
    eur = services.price_create(
        actor=None,
        currency="eur",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.PER_UNIT,
        meter=MeterFactory.create(),
        unit_amount_decimal=D(1),
    )
    customer = CustomerFactory.create()
    with pytest.raises(ValidationError, match="one currency"):
        services.subscription_create(
            actor=None,
            customer=customer,
            items=[services.ItemInput(price=usd), services.ItemInput(price=eur)],
            interval="month",
        )
    services.price_archive(price=usd, actor=None)
    with pytest.raises(ValidationError, match="archived"):
        services.subscription_create(
            actor=None, customer=customer, items=[services.ItemInput(price=usd)], interval="month"
        )


def test_subscription_interval_at_most_three_years() -> None:
    with pytest.raises(ValidationError, match="3 years"):
        services.subscription_create(
            actor=None,
            customer=CustomerFactory.create(),
            items=[services.ItemInput(price=build_price())],
            interval="month",
            interval_count=37,
        )


@override_settings(BILLING_GRACE_PERIOD_MINUTES=24 * 60)
def test_the_grace_period_must_be_shorter_than_the_interval() -> None:
    price = build_price()
    with pytest.raises(ValidationError, match="grace period"):
        services.subscription_create(
            actor=None, customer=CustomerFactory.create(), items=[services.ItemInput(price=price)],
            interval="day",
        )  # fmt: skip
    services.subscription_create(
        actor=None,
        customer=CustomerFactory.create(),
        items=[services.ItemInput(price=price)],
        interval="day",
        interval_count=2,
    )


def test_subscription_times_sit_on_whole_minutes() -> None:
    subscription = services.subscription_create(
        actor=None,
        customer=CustomerFactory.create(),
        items=[services.ItemInput(price=build_price())],
        interval="month",
        start_date=utc(2025, 1, 31, 10, 15) + timedelta(seconds=42),
    )
    assert subscription.start_date == utc(2025, 1, 31, 10, 15)
    assert subscription.billing_cycle_anchor == utc(2025, 1, 31, 10, 15)


def test_cancel_at_period_end_ends_with_the_current_period_and_can_be_withdrawn() -> None:
    subscription = services.subscription_create(
        actor=None,
        customer=CustomerFactory.create(),
        items=[services.ItemInput(price=build_price())],
        interval="month",
        start_date=utc(2025, 1, 31),
    )
    services.subscription_cancel_at_period_end(
        subscription=subscription, actor=None, now=utc(2025, 3, 5)
    )
    subscription.refresh_from_db()
    assert subscription.ends_at == utc(2025, 3, 31)
    assert subscription.schedule.period_at(utc(2025, 3, 31)) is None
    services.subscription_resume(subscription=subscription, actor=None, now=utc(2025, 3, 6))
    subscription.refresh_from_db()
    assert subscription.ends_at is None
    assert not subscription.cancel_at_period_end


def test_credit_grant_ledger_and_void() -> None:
    customer = CustomerFactory.create()
    now = utc(2025, 1, 1)
    grant = services.credit_grant_create(
        actor=None, customer=customer, amount=5000, currency="USD", now=now
    )
    assert grant.currency == "usd"
    assert credit_grant_balances(grants=[grant]) == {grant.pk: 5000}
    services.credit_grant_void(grant=grant, actor=None, now=now)
    assert credit_grant_balances(grants=[grant]) == {grant.pk: 0}
    types = list(grant.transactions.values_list("type", flat=True))
    assert types == [CreditTransaction.Type.GRANTED, CreditTransaction.Type.VOIDED]


def test_credit_grant_checks() -> None:
    customer = CustomerFactory.create()
    with pytest.raises(ValidationError, match="from 0"):
        services.credit_grant_create(
            actor=None, customer=customer, amount=1, currency="usd", priority=101
        )
    with pytest.raises(ValidationError, match="after the effective"):
        services.credit_grant_create(
            actor=None,
            customer=customer,
            amount=1,
            currency="usd",
            effective_at=utc(2025, 2, 1),
            expires_at=utc(2025, 1, 1),
        )
    licensed = services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.LICENSED,
        pricing_model=Price.Model.PER_UNIT,
        unit_amount_decimal=D(100),
    )
    with pytest.raises(ValidationError, match="not metered"):
        services.credit_grant_create(
            actor=None, customer=customer, amount=1, currency="usd", prices=[licensed]
        )


def test_at_most_100_unused_grants_per_customer() -> None:
    customer = CustomerFactory.create()
    now = utc(2025, 1, 1)
    for _ in range(100):
        services.credit_grant_create(
            actor=None, customer=customer, amount=1, currency="usd", now=now
        )
    assert unused_credit_grant_count(customer=customer, now=now) == 100
    with pytest.raises(ValidationError) as info:
        services.credit_grant_create(
            actor=None, customer=customer, amount=1, currency="usd", now=now
        )
    assert info.value.code == "credit_grant_limit"
    # A voided grant is no longer unused, so one more fits.
    voided = customer.credit_grants.first()
    assert voided is not None
    services.credit_grant_void(grant=voided, actor=None, now=now)
    services.credit_grant_create(actor=None, customer=customer, amount=1, currency="usd", now=now)
    # Expired grants don't count either.
    other = CustomerFactory.create()
    services.credit_grant_create(
        actor=None, customer=other, amount=1, currency="usd", now=now, expires_at=utc(2025, 6, 1)
    )
    assert unused_credit_grant_count(customer=other, now=utc(2025, 5, 31)) == 1
    assert unused_credit_grant_count(customer=other, now=utc(2025, 6, 1)) == 0


def test_subscription_builder_has_one_item() -> None:
    subscription = build_subscription()
    assert subscription.items.count() == 1


@pytest.mark.parametrize(("minutes", "ok"), [(0, True), (60, True), (4320, True), (4321, False)])
def test_grace_period_setting_is_checked_at_start_up(minutes: int, ok: bool) -> None:
    from billing.checks import grace_period_check

    with override_settings(BILLING_GRACE_PERIOD_MINUTES=minutes):
        errors = grace_period_check(None)
    assert (errors == []) is ok
