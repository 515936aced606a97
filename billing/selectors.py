"""Reads for billing: usage quantities, invoice lines as they stand, estimates, credits.

Usage comes only from ``usage.summaries.meter_usage_aggregate`` (the one place usage is
computed); this module prices it with ``billing.pricing`` and applies credit grants in
Stripe's order (reference section 8.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet, Sum

from billing.models import (
    CreditGrant,
    CreditTransaction,
    Invoice,
    InvoiceLine,
    Price,
    Subscription,
    SubscriptionItem,
)
from billing.periods import Period, shortest_period
from billing.pricing import PricedLine, price_amount
from customers.models import Customer
from events.models import MeterEvent
from meters.models import Meter
from usage.summaries import meter_usage_aggregate

ZERO = Decimal(0)


# --- Usage -----------------------------------------------------------------------------------
def usage_quantity(*, meter: Meter, customer: Customer, start: datetime, end: datetime) -> Decimal:
    """The meter's aggregate for the customer over [start, end): sum, count or last."""
    return meter_usage_aggregate(
        meter=meter, customer=customer, start=start, end=end
    ).aggregated_value


# --- Prices ----------------------------------------------------------------------------------
def price_list(*, active: str = "", meter: Meter | None = None) -> QuerySet[Price]:
    prices = Price.objects.select_related("meter", "replaced_by")
    if active == "active":
        prices = prices.filter(active=True)
    elif active == "archived":
        prices = prices.filter(active=False)
    if meter is not None:
        prices = prices.filter(meter=meter)
    return prices


def price_is_used(*, price: Price) -> bool:
    return (
        SubscriptionItem.objects.filter(price=price).exists()
        or InvoiceLine.objects.filter(price=price).exists()
    )


# --- Subscriptions ---------------------------------------------------------------------------
def customer_subscriptions(*, customer: Customer) -> QuerySet[Subscription]:
    return Subscription.objects.filter(customer=customer).prefetch_related(
        Prefetch("items", queryset=SubscriptionItem.objects.select_related("price__meter"))
    )


def subscription_is_live(subscription: Subscription, *, now: datetime) -> bool:
    return subscription.ends_at is None or subscription.ends_at > now


def grace_period() -> timedelta:
    return timedelta(minutes=settings.BILLING_GRACE_PERIOD_MINUTES)


def grace_period_for(period: Period) -> timedelta:
    """The portal's grace period, kept shorter than the period it follows (Stripe: "don't
    specify a value that's longer than your subscription period")."""
    grace = grace_period()
    if grace >= period.length:
        return max(period.length - timedelta(minutes=1), timedelta(0))
    return grace


def grace_fits_interval(*, interval: str, interval_count: int) -> bool:
    from billing.periods import Interval

    return grace_period() < shortest_period(Interval(interval), interval_count)


# --- Lines -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ComputedLine:
    """One price's line for one period, priced, before credits."""

    item: SubscriptionItem
    price: Price
    meter: Meter | None
    quantity: Decimal
    priced: PricedLine

    @property
    def amount(self) -> int:
        return self.priced.amount

    @property
    def description(self) -> str:
        if self.meter is not None:
            return f"{self.meter.display_name} ({self.price.get_pricing_model_display()})"
        return self.price.nickname or "Flat fee"


def lines_compute(*, subscription: Subscription, period: Period) -> list[ComputedLine]:
    """Every item of the subscription priced for ``period``, in item order."""
    lines = []
    for item in subscription.items.all():
        price = item.price
        if price.is_metered:
            assert price.meter is not None
            quantity = usage_quantity(
                meter=price.meter,
                customer=subscription.customer,
                start=period.start,
                end=period.end,
            )
        else:
            quantity = Decimal(item.quantity)
        lines.append(
            ComputedLine(
                item=item,
                price=price,
                meter=price.meter,
                quantity=max(ZERO, quantity),
                priced=price_amount(price.spec, quantity),
            )
        )
    return lines


# --- Credits ---------------------------------------------------------------------------------
def credit_grant_order_key(grant: CreditGrant) -> tuple[object, ...]:
    """Stripe's order: priority (0 first), earlier expiry (never-expiring last), promotional
    before paid, earlier effective date, earlier creation."""
    far = datetime.max.replace(tzinfo=UTC)
    return (
        grant.priority,
        grant.expires_at or far,
        0 if grant.category == CreditGrant.Category.PROMOTIONAL else 1,
        grant.effective_at,
        grant.created,
        grant.pk,
    )


def credit_grant_balances(*, grants: Iterable[CreditGrant]) -> dict[int, int]:
    """Ledger balance per grant id: credits minus debits."""
    ids = [grant.pk for grant in grants]
    balances = dict.fromkeys(ids, 0)
    rows = (
        CreditTransaction.objects.filter(grant_id__in=ids)
        .values("grant_id", "kind")
        .annotate(total=Sum("amount"))
    )
    for row in rows:
        sign = 1 if row["kind"] == CreditTransaction.Kind.CREDIT else -1
        balances[row["grant_id"]] += sign * row["total"]
    return balances


def credit_grant_applies(grant: CreditGrant, *, period_end: datetime, currency: str) -> bool:
    """Eligible for an invoice whose period ends at ``period_end`` (reference 8.3)."""
    return (
        grant.voided_at is None
        and grant.currency == currency
        and period_end >= grant.effective_at
        and (grant.expires_at is None or period_end < grant.expires_at)
    )


@dataclass(frozen=True, slots=True)
class CreditApplication:
    grant: CreditGrant
    line_index: int
    amount: int


def credits_allocate(
    *,
    lines: Sequence[ComputedLine],
    grants: Sequence[CreditGrant],
    balances: dict[int, int],
    period_end: datetime,
    currency: str,
) -> list[CreditApplication]:
    """Cover metered lines, in order of appearance, from eligible grants in Stripe's order.

    Pure: ``balances`` is not changed. Licensed lines get no credits (grants apply only to
    metered prices reporting through meters).
    """
    remaining = dict(balances)
    ordered = sorted(
        (g for g in grants if credit_grant_applies(g, period_end=period_end, currency=currency)),
        key=credit_grant_order_key,
    )
    scoped = {g.pk: {p.pk for p in g.prices.all()} for g in ordered if not g.applies_to_all_metered}
    applications = []
    for index, line in enumerate(lines):
        if not line.price.is_metered:
            continue
        owed = line.amount
        for grant in ordered:
            if owed <= 0:
                break
            if not grant.applies_to_all_metered and line.price.pk not in scoped[grant.pk]:
                continue
            take = min(owed, remaining.get(grant.pk, 0))
            if take > 0:
                applications.append(CreditApplication(grant, index, take))
                remaining[grant.pk] -= take
                owed -= take
    return applications


def customer_credit_grants(*, customer: Customer) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(customer=customer).prefetch_related("prices")


@dataclass(frozen=True, slots=True)
class GrantRow:
    grant: CreditGrant
    balance: int
    status: str  # pending, granted, depleted, expired, voided


def credit_grant_rows(*, customer: Customer, now: datetime) -> list[GrantRow]:
    grants = list(customer_credit_grants(customer=customer))
    balances = credit_grant_balances(grants=grants)
    rows = [
        GrantRow(g, balances[g.pk], credit_grant_status(g, balance=balances[g.pk], now=now))
        for g in grants
    ]
    rows.sort(key=lambda row: credit_grant_order_key(row.grant))
    return rows


def credit_grant_status(grant: CreditGrant, *, balance: int, now: datetime) -> str:
    if grant.voided_at is not None:
        return "voided"
    if grant.expires_at is not None and grant.expires_at <= now:
        return "expired"
    if grant.effective_at > now:
        return "pending"
    return "granted" if balance > 0 else "depleted"


def unused_credit_grant_count(*, customer: Customer, now: datetime) -> int:
    """Not voided, not expired, and pending or with a positive balance (reference 8.3)."""
    grants = CreditGrant.objects.filter(customer=customer, voided_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    balances = credit_grant_balances(grants=grants)
    return sum(1 for g in grants if g.effective_at > now or balances[g.pk] > 0)


# --- Estimates -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EstimateLine:
    line: ComputedLine
    credits_applied: int
    projected: PricedLine | None  # priced at the projected quantity


@dataclass(frozen=True, slots=True)
class InvoiceEstimate:
    subscription: Subscription
    period: Period
    currency: str
    as_of: datetime
    lines: tuple[EstimateLine, ...]
    subtotal: int
    credits_applied: int
    total: int
    # The period's share already elapsed, 0..1, and the subtotal at the current rate.
    elapsed_fraction: Decimal
    projected_subtotal: int | None


def projection_quantity(*, meter: Meter, quantity: Decimal, fraction: Decimal) -> Decimal:
    """Usage at period end if it keeps its current rate. A `last` meter reports a level,
    not a flow, so its projection is its current value."""
    if meter.aggregation_formula == Meter.Formula.LAST or fraction <= 0:
        return quantity
    return (quantity / fraction).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def subscription_estimate(*, subscription: Subscription, now: datetime) -> InvoiceEstimate | None:
    """The upcoming invoice of the period running at ``now`` (None outside the life)."""
    period = subscription.schedule.period_at(now)
    if period is None:
        return None
    lines = lines_compute(subscription=subscription, period=period)
    grants = list(customer_credit_grants(customer=subscription.customer))
    applications = credits_allocate(
        lines=lines,
        grants=grants,
        balances=credit_grant_balances(grants=grants),
        period_end=period.end,
        currency=subscription.currency,
    )
    credited = [0] * len(lines)
    for application in applications:
        credited[application.line_index] += application.amount
    # Exact, in microseconds: a rounded fraction is 0 in the first second of a long period.
    microsecond = timedelta(microseconds=1)
    elapsed = Decimal((now - period.start) // microsecond)
    fraction = elapsed / Decimal(period.length // microsecond) if elapsed > 0 else ZERO
    estimate_lines = []
    projected_subtotal: int | None = 0
    for index, line in enumerate(lines):
        projected = None
        if line.meter is not None and fraction > 0:
            quantity = projection_quantity(
                meter=line.meter, quantity=line.quantity, fraction=fraction
            )
            projected = price_amount(line.price.spec, quantity)
        elif line.meter is None:
            projected = line.priced
        if projected is None or projected_subtotal is None:
            projected_subtotal = None
        else:
            projected_subtotal += projected.amount
        estimate_lines.append(EstimateLine(line, credited[index], projected))
    subtotal = sum(line.amount for line in lines)
    credits = sum(credited)
    return InvoiceEstimate(
        subscription=subscription,
        period=period,
        currency=subscription.currency,
        as_of=now,
        lines=tuple(estimate_lines),
        subtotal=subtotal,
        credits_applied=credits,
        total=subtotal - credits,
        elapsed_fraction=fraction,
        projected_subtotal=projected_subtotal,
    )


def customer_estimates(*, customer: Customer, now: datetime) -> list[InvoiceEstimate]:
    estimates = []
    for subscription in customer_subscriptions(customer=customer):
        estimate = subscription_estimate(subscription=subscription, now=now)
        if estimate is not None:
            estimates.append(estimate)
    return estimates


# --- Invoices --------------------------------------------------------------------------------
def customer_invoices(*, customer: Customer) -> QuerySet[Invoice]:
    return Invoice.objects.filter(customer=customer).select_related("subscription")


def invoice_lines(*, invoice: Invoice) -> QuerySet[InvoiceLine]:
    return invoice.lines.select_related("price", "meter")


def invoices_due_for_finalization(*, now: datetime) -> QuerySet[Invoice]:
    return Invoice.objects.filter(status=Invoice.Status.DRAFT, finalize_after__lte=now)


# --- Late usage ------------------------------------------------------------------------------
def meter_events_late(queryset: QuerySet[MeterEvent] | None = None) -> QuerySet[MeterEvent]:
    """Events flagged "late, not billed": received after the invoice covering their
    timestamp (same customer and meter) was finalized. Stripe bills such usage nowhere.

    Usable by the event explorer: ``meter_events_late(MeterEvent.objects.filter(...))``.
    Cancelled events are left out: they would not have been billed anyway.
    """
    events = MeterEvent.objects.all() if queryset is None else queryset
    return events.filter(meter_events_late_q(), cancelled_at__isnull=True)


def meter_events_late_q() -> Q:
    """The "late, not billed" condition as a Q, for filters that combine it with others."""
    finalized_lines = InvoiceLine.objects.filter(
        meter=OuterRef("meter"),
        invoice__customer=OuterRef("customer"),
        invoice__status=Invoice.Status.FINALIZED,
        invoice__period_start__lte=OuterRef("timestamp"),
        invoice__period_end__gt=OuterRef("timestamp"),
        invoice__finalized_at__lt=OuterRef("received_at"),
    )
    return Q(Exists(finalized_lines))


def customer_late_events(
    *, customer: Customer, limit: int = 50, invoices: int = 24
) -> list[MeterEvent]:
    """The customer's latest "late, not billed" events, newest first.

    Looks only where late events can be: per line of the customer's latest finalized
    invoices, the line's meter over the invoice period, received after finalization. Each
    part is a range scan of the (meter, customer, timestamp) index, and a customer without
    finalized invoices costs one small query. Older invoices stay covered by
    ``meter_events_late`` (the event explorer's filter).
    """
    lines = list(
        InvoiceLine.objects.filter(
            invoice__customer=customer,
            invoice__status=Invoice.Status.FINALIZED,
            meter__isnull=False,
        )
        .order_by("-invoice__period_end")
        .values_list("meter_id", "invoice__period_start", "invoice__period_end",
                     "invoice__finalized_at")[: invoices * 10]
    )  # fmt: skip
    if not lines:
        return []
    where = Q()
    for meter_id, period_start, period_end, finalized_at in lines:
        where |= Q(
            meter_id=meter_id,
            timestamp__gte=period_start,
            timestamp__lt=period_end,
            received_at__gt=finalized_at,
        )
    events = MeterEvent.objects.filter(where, customer=customer, cancelled_at__isnull=True)
    return list(events.select_related("meter").order_by("-received_at", "-id")[:limit])
