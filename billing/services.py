"""Writes for billing: prices, subscriptions, invoices and credit grants.

Keyword-only, one transaction each, ``ValidationError`` with a code on refusal, and an
``AuditEntry`` for every change people make (through ``meters.services.audit_record``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import (
    CreditGrant,
    CreditTransaction,
    Invoice,
    InvoiceLine,
    Price,
    Subscription,
    SubscriptionItem,
    tier_to_json,
)
from billing.periods import Interval, Period, PeriodError, interval_validate
from billing.pricing import (
    PackageRounding,
    PriceSpec,
    PricingError,
    PricingModel,
    Tier,
    spec_validate,
)
from billing.selectors import (
    credit_grant_balances,
    credits_allocate,
    grace_fits_interval,
    grace_period,
    grace_period_for,
    invoices_due_for_finalization,
    lines_compute,
    unused_credit_grant_count,
)
from customers.models import Customer
from meters.models import Meter
from usage_portal.audit import audit_record
from usage_portal.models import AuditEntry

MAX_UNUSED_CREDIT_GRANTS = 100


def _user(actor: AbstractBaseUser | None) -> Any:
    """The user to record as creator: None for the system and anonymous users."""
    return actor if actor is not None and actor.is_authenticated else None


def _minute(moment: datetime) -> datetime:
    """Billing boundaries sit on whole minutes, as usage summaries require."""
    return moment.replace(second=0, microsecond=0)


# --- Prices ----------------------------------------------------------------------------------
@transaction.atomic
def price_create(
    *,
    actor: AbstractBaseUser | None,
    currency: str,
    usage_type: str,
    pricing_model: str,
    meter: Meter | None = None,
    unit_amount_decimal: Decimal | None = None,
    package_size: int | None = None,
    package_rounding: str = PackageRounding.UP,
    tiers: Sequence[Tier] = (),
    nickname: str = "",
    replaces: Price | None = None,
) -> Price:
    """Create a price. With ``replaces``, the new price is that price's next version and
    the old one is archived: prices never change once created, so invoices keep theirs."""
    if usage_type == Price.UsageType.METERED:
        if meter is None:
            raise ValidationError({"meter": "A metered price needs a meter."}, code="no_meter")
        if not meter.is_active:
            raise ValidationError(
                {"meter": f"The meter {meter.display_name} is deactivated: it can't take prices."},
                code="archived_meter",
            )
    else:
        if meter is not None:
            raise ValidationError({"meter": "A licensed price has no meter."}, code="invalid")
        if pricing_model != PricingModel.PER_UNIT:
            raise ValidationError(
                {"pricing_model": "A licensed price is a flat fee: choose per unit."},
                code="invalid",
            )
    spec = PriceSpec(
        model=PricingModel(pricing_model),
        unit_amount=unit_amount_decimal,
        package_size=package_size if pricing_model == PricingModel.PACKAGE else None,
        package_rounding=PackageRounding(package_rounding),
        tiers=tuple(tiers),
    )
    try:
        spec_validate(spec)
    except PricingError as error:
        raise ValidationError(str(error), code="invalid_pricing") from error
    price = Price(
        nickname=nickname,
        currency=currency,
        usage_type=usage_type,
        meter=meter,
        pricing_model=pricing_model,
        unit_amount_decimal=unit_amount_decimal,
        package_size=spec.package_size,
        package_rounding=package_rounding,
        tiers=[tier_to_json(tier) for tier in tiers],
        replaces=replaces,
        created_by=_user(actor),
    )
    price.full_clean(exclude=["replaces", "created_by"])
    if replaces is not None:
        replaces = Price.objects.select_for_update().get(pk=replaces.pk)
        if hasattr(replaces, "replaced_by"):
            raise ValidationError(
                f"{replaces.price_id} already has a newer version.", code="already_replaced"
            )
        replaces.active = False
        replaces.save(update_fields=["active"])
    price.save()
    audit_record(
        target=price,
        action=AuditEntry.Action.CREATE,
        actor=actor,
        changes={"price": [replaces.price_id if replaces else None, price.price_id]},
    )
    return price


@transaction.atomic
def price_archive(*, price: Price, actor: AbstractBaseUser | None) -> Price:
    """Archived prices stay on existing subscriptions but can't be added to new ones."""
    if price.active:
        price.active = False
        price.save(update_fields=["active"])
        audit_record(target=price, action=AuditEntry.Action.DEACTIVATE, actor=actor)
    return price


@transaction.atomic
def price_unarchive(*, price: Price, actor: AbstractBaseUser | None) -> Price:
    if hasattr(price, "replaced_by"):
        raise ValidationError(
            f"This price was replaced by {price.replaced_by.price_id}.", code="replaced"
        )
    if not price.active:
        price.active = True
        price.save(update_fields=["active"])
        audit_record(target=price, action=AuditEntry.Action.REACTIVATE, actor=actor)
    return price


# --- Subscriptions ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ItemInput:
    price: Price
    quantity: int = 1


@transaction.atomic
def subscription_create(
    *,
    actor: AbstractBaseUser | None,
    customer: Customer,
    items: Sequence[ItemInput],
    interval: str,
    interval_count: int = 1,
    start_date: datetime | None = None,
    billing_cycle_anchor: datetime | None = None,
    backdate_start_date: datetime | None = None,
    now: datetime | None = None,
) -> Subscription:
    now = now or timezone.now()
    start = _minute(start_date or now)
    anchor = _minute(billing_cycle_anchor or start)
    backdate = _minute(backdate_start_date) if backdate_start_date else None
    try:
        interval_validate(Interval(interval), interval_count)
    except PeriodError as error:
        raise ValidationError({"interval_count": str(error)}, code="invalid_interval") from error
    if not grace_fits_interval(interval=interval, interval_count=interval_count):
        raise ValidationError(
            {
                "interval": (
                    f"The invoice grace period ({grace_period()}) must be shorter than the "
                    "billing interval: choose a longer interval."
                )
            },
            code="interval_shorter_than_grace",
        )
    if backdate is not None and backdate >= start:
        raise ValidationError(
            {"backdate_start_date": "A backdated start must lie before the start date."},
            code="invalid_backdate",
        )
    if not items:
        raise ValidationError("Add at least one price.", code="no_items")
    prices = [item.price for item in items]
    if len({p.pk for p in prices}) != len(prices):
        raise ValidationError("Each price can appear only once.", code="duplicate_price")
    currencies = {p.currency for p in prices}
    if len(currencies) != 1:
        raise ValidationError(
            "All prices of a subscription must use one currency.", code="mixed_currencies"
        )
    for item in items:
        if not item.price.active:
            raise ValidationError(
                f"{item.price.price_id} is archived: choose an active price.",
                code="price_archived",
            )
        if item.quantity < 1:
            raise ValidationError("Quantities must be at least 1.", code="invalid_quantity")
    subscription = Subscription.objects.create(
        customer=customer,
        currency=currencies.pop(),
        interval=interval,
        interval_count=interval_count,
        billing_cycle_anchor=anchor,
        start_date=start,
        backdate_start_date=backdate,
        created_by=_user(actor),
    )
    SubscriptionItem.objects.bulk_create(
        SubscriptionItem(subscription=subscription, price=item.price, quantity=item.quantity)
        for item in items
    )
    audit_record(
        target=subscription,
        action=AuditEntry.Action.CREATE,
        actor=actor,
        changes={"prices": [None, [p.price_id for p in prices]]},
    )
    return subscription


@transaction.atomic
def subscription_cancel_at_period_end(
    *, subscription: Subscription, actor: AbstractBaseUser | None, now: datetime | None = None
) -> Subscription:
    """Stripe's cancel_at_period_end: the subscription ends when the current period does,
    and that period's usage is still invoiced."""
    now = now or timezone.now()
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    if subscription.cancel_at_period_end:
        return subscription
    period = subscription.schedule.period_at(max(now, subscription.effective_start))
    if period is None:
        raise ValidationError("This subscription has already ended.", code="ended")
    subscription.cancel_at_period_end = True
    subscription.ends_at = period.end
    subscription.save(update_fields=["cancel_at_period_end", "ends_at"])
    audit_record(
        target=subscription,
        action=AuditEntry.Action.UPDATE,
        actor=actor,
        changes={"ends_at": [None, period.end]},
    )
    return subscription


@transaction.atomic
def subscription_resume(
    *, subscription: Subscription, actor: AbstractBaseUser | None, now: datetime | None = None
) -> Subscription:
    """Undo cancel-at-period-end while the period is still running."""
    now = now or timezone.now()
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    if not subscription.cancel_at_period_end:
        return subscription
    assert subscription.ends_at is not None
    if subscription.ends_at <= now:
        raise ValidationError("This subscription has already ended.", code="ended")
    old = subscription.ends_at
    subscription.cancel_at_period_end = False
    subscription.ends_at = None
    subscription.save(update_fields=["cancel_at_period_end", "ends_at"])
    audit_record(
        target=subscription,
        action=AuditEntry.Action.UPDATE,
        actor=actor,
        changes={"ends_at": [old, None]},
    )
    return subscription


# --- Invoices --------------------------------------------------------------------------------
def invoice_drafts_create(*, now: datetime) -> int:
    """Open a draft invoice for every subscription period that has ended by ``now``.

    Idempotent: one invoice per (subscription, period start), enforced by the database.
    """
    created = 0
    for subscription in Subscription.objects.filter(start_date__lte=now).select_related("customer"):
        last = subscription.invoices.order_by("-period_end").values_list("period_end", flat=True)
        after = last.first()
        for period in subscription.schedule.ended_periods(now=now, after=after):
            if after is not None and period.start < after:
                continue
            try:
                with transaction.atomic():
                    Invoice.objects.create(
                        customer=subscription.customer,
                        subscription=subscription,
                        currency=subscription.currency,
                        period_start=period.start,
                        period_end=period.end,
                        finalize_after=period.end + grace_period_for(period),
                    )
                created += 1
            except IntegrityError:
                continue  # another worker opened it first
    return created


@transaction.atomic
def invoice_finalize(*, invoice: Invoice, now: datetime | None = None) -> Invoice:
    """Freeze a draft whose grace period is over: lines, quantities, amounts, credits.

    Usage counts by event timestamp, so whatever arrived before now for the period, grace
    period included, is on the invoice; whatever arrives later is "late, not billed".
    """
    now = now or timezone.now()
    invoice = Invoice.objects.select_for_update().select_related("subscription").get(pk=invoice.pk)
    if not invoice.is_draft:
        return invoice
    if invoice.finalize_after > now:
        raise ValidationError(
            "This invoice is still in its grace period.", code="grace_period_running"
        )
    period = Period(invoice.period_start, invoice.period_end)
    lines = lines_compute(subscription=invoice.subscription, period=period)
    # Lock the customer's grants in a fixed order so two finalizations can't spend the same
    # balance ("first to finalize" wins).
    grants = list(
        CreditGrant.objects.select_for_update()
        .filter(customer=invoice.customer)
        .order_by("pk")
        .prefetch_related("prices")
    )
    applications = credits_allocate(
        lines=lines,
        grants=grants,
        balances=credit_grant_balances(grants=grants),
        period_end=invoice.period_end,
        currency=invoice.currency,
    )
    stored = []
    for position, line in enumerate(lines, start=1):
        priced = line.priced
        stored.append(
            InvoiceLine(
                invoice=invoice,
                position=position,
                price=line.price,
                meter=line.meter,
                description=line.description,
                quantity=line.quantity,
                amount=line.amount,
                credits_applied=0,
                computation={
                    "pricing": line.price.spec_json(),
                    "meter": (
                        {
                            "meter_id": line.meter.meter_id,
                            "event_name": line.meter.event_name,
                            "aggregation_formula": line.meter.aggregation_formula,
                        }
                        if line.meter
                        else None
                    ),
                    "quantity": str(priced.quantity),
                    "billed_units": str(priced.billed_units),
                    "exact_amount": str(priced.exact_amount),
                    "tiers": [
                        {
                            "number": use.number,
                            "range": use.range_label,
                            "quantity": str(use.quantity),
                            "unit_amount": str(use.unit_amount),
                            "flat_amount": str(use.flat_amount),
                            "amount": str(use.amount),
                        }
                        for use in priced.tiers
                    ],
                },
            )
        )
    InvoiceLine.objects.bulk_create(stored)
    saved = list(invoice.lines.order_by("position"))
    for application in applications:
        saved_line = saved[application.line_index]
        saved_line.credits_applied += application.amount
        CreditTransaction.objects.create(
            grant=application.grant,
            kind=CreditTransaction.Kind.DEBIT,
            type=CreditTransaction.Type.APPLIED,
            amount=application.amount,
            invoice=invoice,
            invoice_line=saved_line,
            at=now,
        )
    for saved_line in saved:
        if saved_line.credits_applied:
            saved_line.save(update_fields=["credits_applied"])
    invoice.subtotal = sum(saved_line.amount for saved_line in saved)
    invoice.credits_applied = sum(saved_line.credits_applied for saved_line in saved)
    invoice.total = invoice.subtotal - invoice.credits_applied
    invoice.status = Invoice.Status.FINALIZED
    invoice.finalized_at = now
    invoice.save(update_fields=["subtotal", "credits_applied", "total", "status", "finalized_at"])
    return invoice


def invoices_advance(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic job: expire credits, open drafts for ended periods, finalize drafts
    whose grace period is over (oldest first, so earlier invoices take credits first)."""
    now = now or timezone.now()
    expired = credit_grants_expire(now=now)
    drafts = invoice_drafts_create(now=now)
    finalized = 0
    for invoice in invoices_due_for_finalization(now=now).order_by("period_end", "pk"):
        invoice_finalize(invoice=invoice, now=now)
        finalized += 1
    return {"credits_expired": expired, "drafts_created": drafts, "finalized": finalized}


# --- Credit grants ---------------------------------------------------------------------------
@transaction.atomic
def credit_grant_create(
    *,
    actor: AbstractBaseUser | None,
    customer: Customer,
    amount: int,
    currency: str,
    category: str = CreditGrant.Category.PAID,
    priority: int = 50,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    prices: Sequence[Price] = (),
    name: str = "",
    now: datetime | None = None,
) -> CreditGrant:
    """Grant monetary credits (minor units). No prices: every metered price."""
    now = now or timezone.now()
    effective_at = effective_at or now
    currency = currency.lower()
    if amount <= 0:
        raise ValidationError({"amount": "Grant a positive amount."}, code="invalid_amount")
    if not 0 <= priority <= 100:
        raise ValidationError(
            {"priority": "Priority goes from 0 (applied first) to 100."}, code="invalid_priority"
        )
    if expires_at is not None and expires_at <= effective_at:
        raise ValidationError(
            {"expires_at": "The expiry must come after the effective date."},
            code="invalid_expiry",
        )
    for price in prices:
        if not price.is_metered:
            raise ValidationError(
                {"prices": f"{price.price_id} is not metered: credits apply to metered prices."},
                code="price_not_metered",
            )
        if price.currency != currency:
            raise ValidationError(
                {"prices": f"{price.price_id} is in {price.currency.upper()}, not {currency}."},
                code="currency_mismatch",
            )
    # Serialise grant creation per customer so the limit holds under concurrency.
    Customer.objects.select_for_update().filter(pk=customer.pk).first()
    if unused_credit_grant_count(customer=customer, now=now) >= MAX_UNUSED_CREDIT_GRANTS:
        raise ValidationError(
            f"This customer already has {MAX_UNUSED_CREDIT_GRANTS} unused credit grants, the "
            "most allowed. Void or wait for some to be used or expire.",
            code="credit_grant_limit",
        )
    grant = CreditGrant.objects.create(
        customer=customer,
        name=name,
        category=category,
        priority=priority,
        currency=currency,
        amount=amount,
        effective_at=effective_at,
        expires_at=expires_at,
        applies_to_all_metered=not prices,
        created_by=_user(actor),
    )
    if prices:
        grant.prices.set(prices)
    CreditTransaction.objects.create(
        grant=grant,
        kind=CreditTransaction.Kind.CREDIT,
        type=CreditTransaction.Type.GRANTED,
        amount=amount,
        at=now,
    )
    audit_record(
        target=grant,
        action=AuditEntry.Action.CREATE,
        actor=actor,
        changes={"amount": [None, amount], "currency": [None, currency]},
    )
    return grant


@transaction.atomic
def credit_grant_void(
    *, grant: CreditGrant, actor: AbstractBaseUser | None, now: datetime | None = None
) -> CreditGrant:
    """Void a grant that was never applied to an invoice; its balance is debited."""
    now = now or timezone.now()
    grant = CreditGrant.objects.select_for_update().get(pk=grant.pk)
    if grant.voided_at is not None:
        return grant
    if grant.transactions.filter(type=CreditTransaction.Type.APPLIED).exists():
        raise ValidationError(
            "This grant has been applied to an invoice and can't be voided.", code="applied"
        )
    balance = credit_grant_balances(grants=[grant])[grant.pk]
    if balance > 0:
        CreditTransaction.objects.create(
            grant=grant,
            kind=CreditTransaction.Kind.DEBIT,
            type=CreditTransaction.Type.VOIDED,
            amount=balance,
            at=now,
        )
    grant.voided_at = now
    grant.save(update_fields=["voided_at"])
    audit_record(target=grant, action=AuditEntry.Action.DEACTIVATE, actor=actor)
    return grant


def credit_grants_expire(*, now: datetime) -> int:
    """Write a credits_expired debit for every expired grant that still has a balance."""
    expired = 0
    candidates = CreditGrant.objects.filter(voided_at__isnull=True, expires_at__lte=now).exclude(
        transactions__type=CreditTransaction.Type.EXPIRED
    )
    for grant in candidates:
        with transaction.atomic():
            locked = CreditGrant.objects.select_for_update().get(pk=grant.pk)
            if locked.transactions.filter(type=CreditTransaction.Type.EXPIRED).exists():
                continue
            balance = credit_grant_balances(grants=[locked])[locked.pk]
            if balance > 0:
                assert locked.expires_at is not None
                CreditTransaction.objects.create(
                    grant=locked,
                    kind=CreditTransaction.Kind.DEBIT,
                    type=CreditTransaction.Type.EXPIRED,
                    amount=balance,
                    at=locked.expires_at,
                )
                expired += 1
    return expired
