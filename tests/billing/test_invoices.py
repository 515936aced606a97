"""Invoices at period end, the grace period, finalization, credits and late usage.

Time is controlled with time-machine; the periodic task's service runs at chosen moments.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.test import Client, override_settings

from billing import services, tasks
from billing.models import CreditTransaction, Invoice, Price, Subscription
from billing.pricing import Tier
from billing.selectors import (
    credit_grant_balances,
    customer_late_events,
    meter_events_late,
    subscription_estimate,
)
from customers.models import Customer
from events.models import MeterEvent
from meters.models import Meter
from tests.billing.conftest import record_usage
from tests.factories import CustomerFactory, MeterFactory

pytestmark = pytest.mark.django_db

D = Decimal


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.fixture
def meter() -> Meter:
    return MeterFactory.create()


@pytest.fixture
def customer() -> Customer:
    return CustomerFactory.create()


@pytest.fixture
def subscription(meter: Meter, customer: Customer) -> Subscription:
    price = services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.GRADUATED,
        meter=meter,
        tiers=[Tier(5, D(700)), Tier(10, D(650)), Tier(None, D(600))],
    )
    return services.subscription_create(
        actor=None,
        customer=customer,
        items=[services.ItemInput(price=price)],
        interval="month",
        start_date=utc(2025, 3, 1),
    )


def advance_at(moment: datetime) -> dict[str, int]:
    with time_machine.travel(moment, tick=False):
        return tasks.invoices_advance()


def test_grace_period_boundaries_and_late_usage(
    meter: Meter, customer: Customer, subscription: Subscription
) -> None:
    with time_machine.travel(utc(2025, 3, 20), tick=False):
        record_usage(meter, customer, 5, utc(2025, 3, 10))
    assert advance_at(utc(2025, 3, 31, 23, 59)) == {
        "credits_expired": 0,
        "drafts_created": 0,
        "finalized": 0,
    }

    # The period ends: a draft opens and stays draft through the 1-hour grace period.
    assert advance_at(utc(2025, 4, 1))["drafts_created"] == 1
    invoice = Invoice.objects.get()
    assert invoice.is_draft
    assert (invoice.period_start, invoice.period_end) == (utc(2025, 3, 1), utc(2025, 4, 1))
    assert invoice.finalize_after == utc(2025, 4, 1, 1)

    # Usage arriving during the grace period, timestamped inside the period, is included.
    with time_machine.travel(utc(2025, 4, 1, 0, 30), tick=False):
        record_usage(meter, customer, 3, utc(2025, 3, 31, 23, 59, 30))
    assert advance_at(utc(2025, 4, 1, 0, 59, 59))["finalized"] == 0
    invoice.refresh_from_db()
    assert invoice.is_draft

    assert advance_at(utc(2025, 4, 1, 1))["finalized"] == 1
    invoice.refresh_from_db()
    assert not invoice.is_draft
    assert invoice.finalized_at == utc(2025, 4, 1, 1)
    (line,) = invoice.lines.all()
    assert line.quantity == 8
    assert line.amount == 5 * 700 + 3 * 650
    assert invoice.subtotal == invoice.total == 5450
    assert line.computation["tiers"][1]["quantity"] == "3"
    assert line.computation["pricing"]["pricing_model"] == "graduated"

    # After finalization, usage for the period is flagged "late, not billed".
    with time_machine.travel(utc(2025, 4, 1, 1, 5), tick=False):
        record_usage(meter, customer, 2, utc(2025, 3, 31, 12), identifier="late-one")
        record_usage(meter, customer, 4, utc(2025, 4, 1, 0, 10), identifier="april-one")
    assert list(meter_events_late().values_list("identifier", flat=True)) == ["late-one"]
    assert [e.identifier for e in customer_late_events(customer=customer)] == ["late-one"]
    assert advance_at(utc(2025, 4, 1, 2))["finalized"] == 0
    invoice.refresh_from_db()
    assert invoice.total == 5450
    # Nor is it billed on the next invoice: April's estimate has only April's usage.
    estimate = subscription_estimate(subscription=subscription, now=utc(2025, 4, 1, 2))
    assert estimate is not None
    assert estimate.lines[0].line.quantity == 4


def test_finalization_is_idempotent_and_one_invoice_per_period(
    meter: Meter, customer: Customer, subscription: Subscription
) -> None:
    advance_at(utc(2025, 5, 1, 3))
    advance_at(utc(2025, 5, 1, 3))
    invoices = list(Invoice.objects.order_by("period_start"))
    assert [(i.period_start, i.status) for i in invoices] == [
        (utc(2025, 3, 1), Invoice.Status.FINALIZED),
        (utc(2025, 4, 1), Invoice.Status.FINALIZED),
    ]
    assert all(i.lines.count() == 1 for i in invoices)


@override_settings(BILLING_GRACE_PERIOD_MINUTES=72 * 60)
def test_longer_grace_period(meter: Meter, customer: Customer, subscription: Subscription) -> None:
    advance_at(utc(2025, 4, 1))
    invoice = Invoice.objects.get()
    assert invoice.finalize_after == utc(2025, 4, 4)
    assert advance_at(utc(2025, 4, 3, 23, 59))["finalized"] == 0
    assert advance_at(utc(2025, 4, 4))["finalized"] == 1


def test_credits_are_taken_at_finalization_first_to_finalize_wins(
    meter: Meter, customer: Customer, subscription: Subscription
) -> None:
    with time_machine.travel(utc(2025, 3, 20), tick=False):
        grant = services.credit_grant_create(
            actor=None, customer=customer, amount=5000, currency="usd"
        )
        record_usage(meter, customer, 5, utc(2025, 3, 10))  # $35
    with time_machine.travel(utc(2025, 4, 20), tick=False):
        record_usage(meter, customer, 5, utc(2025, 4, 10))  # $35
    advance_at(utc(2025, 5, 1, 2))
    march, april = Invoice.objects.order_by("period_start")
    assert (march.subtotal, march.credits_applied, march.total) == (3500, 3500, 0)
    assert (april.subtotal, april.credits_applied, april.total) == (3500, 1500, 2000)
    assert credit_grant_balances(grants=[grant]) == {grant.pk: 0}
    applied = grant.transactions.filter(type=CreditTransaction.Type.APPLIED)
    assert sorted(applied.values_list("amount", flat=True)) == [1500, 3500]
    # A grant applied to an invoice can't be voided.
    with pytest.raises(Exception, match="applied"):
        services.credit_grant_void(grant=grant, actor=None)


def test_expired_credits_leave_the_ledger_balance(customer: Customer) -> None:
    with time_machine.travel(utc(2025, 3, 1), tick=False):
        grant = services.credit_grant_create(
            actor=None, customer=customer, amount=700, currency="usd", expires_at=utc(2025, 3, 15)
        )
    assert advance_at(utc(2025, 3, 15))["credits_expired"] == 1
    assert advance_at(utc(2025, 3, 16))["credits_expired"] == 0
    assert credit_grant_balances(grants=[grant]) == {grant.pk: 0}


def test_backdated_subscription_bills_earlier_usage(meter: Meter, customer: Customer) -> None:
    price = services.price_create(
        actor=None,
        currency="usd",
        usage_type=Price.UsageType.METERED,
        pricing_model=Price.Model.PER_UNIT,
        meter=meter,
        unit_amount_decimal=D(100),
    )
    with time_machine.travel(utc(2025, 3, 5), tick=False):
        record_usage(meter, customer, 7, utc(2025, 2, 20))
        backdated = services.subscription_create(
            actor=None,
            customer=customer,
            items=[services.ItemInput(price=price)],
            interval="month",
            billing_cycle_anchor=utc(2025, 3, 1),
            backdate_start_date=utc(2025, 2, 15),
        )
        other = CustomerFactory.create()
        record_usage(meter, other, 7, utc(2025, 2, 20))
        services.subscription_create(
            actor=None, customer=other, items=[services.ItemInput(price=price)], interval="month"
        )
    advance_at(utc(2025, 3, 5, 1))
    # The backdated subscription's first period, 15 Feb to the anchor, bills the usage.
    invoice = Invoice.objects.get(subscription=backdated)
    assert (invoice.period_start, invoice.period_end) == (utc(2025, 2, 15), utc(2025, 3, 1))
    assert invoice.total == 700
    # The other subscription started on 5 March: its February usage is billed nowhere.
    assert not Invoice.objects.filter(customer=other).exists()


def test_invoice_pages(
    client: Client,
    support_client: Client,
    meter: Meter,
    customer: Customer,
    subscription: Subscription,
) -> None:
    with time_machine.travel(utc(2025, 3, 20), tick=False):
        record_usage(meter, customer, 12, utc(2025, 3, 10))
    advance_at(utc(2025, 4, 1, 0, 5))
    invoice = Invoice.objects.get()
    page = support_client.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    assert "draft" in page
    assert "Tier 3 (11 and above): 2" in page
    advance_at(utc(2025, 4, 1, 1, 5))
    page = support_client.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    assert "finalized" in page
    assert "$79.50" in page  # 5 x $7 + 5 x $6.50 + 2 x $6
    listing = support_client.get(f"/billing/customers/{customer.pk}/invoices/").content.decode()
    assert invoice.invoice_id in listing
    with time_machine.travel(utc(2025, 4, 1, 2), tick=False):
        record_usage(meter, customer, 1, utc(2025, 3, 30), identifier="too-late")
    billing = support_client.get(f"/billing/customers/{customer.pk}/").content.decode()
    assert "Late usage, not billed" in billing
    assert "too-late" in billing
    partial = support_client.get(
        f"/billing/customers/{customer.pk}/late-usage/", headers={"HX-Request": "true"}
    ).content.decode()
    assert "<html" not in partial and "too-late" in partial
    assert f"/billing/customers/{customer.pk}/late-usage/" in (
        support_client.get(customer.get_absolute_url()).content.decode()
    )
    assert MeterEvent.objects.count() == 2
