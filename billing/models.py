"""Prices, subscriptions, invoices and credit grants, after Stripe's objects.

Amounts are integers (or, for unit prices, exact decimals) in the currency's minor units,
as in Stripe's API. Prices never change their pricing once created: a change makes a new
price. Finalized invoices keep their lines, quantities, amounts and the pricing they used,
so they stay as they were whatever happens to prices later. Credit balances come from an
append-only ledger.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from billing.currencies import CURRENCY_CHOICES, format_money
from billing.periods import Interval, Schedule
from billing.pricing import PackageRounding, PriceSpec, PricingModel, Tier
from customers.models import Customer
from meters.models import Meter
from usage_portal.fields import ExactDecimalField
from usage_portal.ids import random_public_id


def new_price_id() -> str:
    return random_public_id("price_")


def new_subscription_id() -> str:
    return random_public_id("sub_")


def new_invoice_id() -> str:
    return random_public_id("in_")


def new_credit_grant_id() -> str:
    return random_public_id("credgr_")


def tier_from_json(row: dict[str, Any]) -> Tier:
    def amount(key: str) -> Decimal | None:
        value = row.get(key)
        return None if value in (None, "") else Decimal(str(value))

    up_to = row.get("up_to")
    return Tier(
        up_to=None if up_to in (None, "inf") else int(up_to),
        unit_amount=amount("unit_amount_decimal"),
        flat_amount=amount("flat_amount_decimal"),
    )


def tier_to_json(tier: Tier) -> dict[str, Any]:
    return {
        "up_to": "inf" if tier.up_to is None else tier.up_to,
        "unit_amount_decimal": None if tier.unit_amount is None else str(tier.unit_amount),
        "flat_amount_decimal": None if tier.flat_amount is None else str(tier.flat_amount),
    }


class Price(models.Model):
    class UsageType(models.TextChoices):
        METERED = "metered", "Metered (usage)"
        LICENSED = "licensed", "Licensed (flat fee)"

    class Model(models.TextChoices):
        PER_UNIT = PricingModel.PER_UNIT.value, "Per unit"
        PACKAGE = PricingModel.PACKAGE.value, "Package"
        GRADUATED = PricingModel.GRADUATED.value, "Graduated tiers"
        VOLUME = PricingModel.VOLUME.value, "Volume tiers"

    class Rounding(models.TextChoices):
        UP = PackageRounding.UP.value, "Round up"
        DOWN = PackageRounding.DOWN.value, "Round down"

    price_id = models.CharField("ID", max_length=40, default=new_price_id, editable=False)
    nickname = models.CharField(max_length=100, blank=True)
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES, default="usd")
    usage_type = models.CharField(max_length=8, choices=UsageType.choices)
    meter = models.ForeignKey(
        Meter, null=True, blank=True, on_delete=models.PROTECT, related_name="prices"
    )
    pricing_model = models.CharField(max_length=9, choices=Model.choices)
    # Minor units with up to 12 decimals, like Stripe's unit_amount_decimal.
    unit_amount_decimal = ExactDecimalField(null=True, blank=True)
    # transform_quantity: divide_by and round.
    package_size = models.PositiveIntegerField(null=True, blank=True)
    package_rounding = models.CharField(max_length=4, choices=Rounding.choices, default=Rounding.UP)
    # [{"up_to": 5 | "inf", "unit_amount_decimal": "700" | None, "flat_amount_decimal": ...}]
    tiers = models.JSONField(default=list, blank=True)
    active = models.BooleanField(default=True)
    replaces = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="replaced_by"
    )
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["price_id"], name="price_unique_price_id"),
            models.CheckConstraint(
                condition=Q(usage_type="metered", meter__isnull=False)
                | Q(usage_type="licensed", meter__isnull=True, pricing_model="per_unit"),
                name="price_metered_has_meter_licensed_is_flat",
            ),
            models.CheckConstraint(
                condition=Q(
                    pricing_model__in=["per_unit", "package"], unit_amount_decimal__isnull=False
                )
                | Q(pricing_model__in=["graduated", "volume"], unit_amount_decimal__isnull=True),
                name="price_unit_amount_matches_model",
            ),
            models.CheckConstraint(
                condition=Q(pricing_model="package", package_size__gte=1)
                | (~Q(pricing_model="package") & Q(package_size__isnull=True)),
                name="price_package_size_only_for_packages",
            ),
        ]

    def __str__(self) -> str:
        label = self.nickname or self.get_pricing_model_display()
        subject = self.meter.display_name if self.meter is not None else "flat fee"
        return f"{label}: {subject} ({self.currency.upper()})"

    def get_absolute_url(self) -> str:
        return reverse("billing:price_detail", kwargs={"price_pk": self.pk})

    @property
    def is_metered(self) -> bool:
        return self.usage_type == self.UsageType.METERED

    @property
    def tier_list(self) -> tuple[Tier, ...]:
        return tuple(tier_from_json(row) for row in self.tiers)

    @property
    def spec(self) -> PriceSpec:
        return PriceSpec(
            model=PricingModel(self.pricing_model),
            unit_amount=self.unit_amount_decimal,
            package_size=self.package_size,
            package_rounding=PackageRounding(self.package_rounding),
            tiers=self.tier_list,
        )

    def spec_json(self) -> dict[str, Any]:
        """The pricing as frozen into an invoice line."""
        return {
            "price_id": self.price_id,
            "currency": self.currency,
            "usage_type": self.usage_type,
            "pricing_model": self.pricing_model,
            "unit_amount_decimal": (
                None if self.unit_amount_decimal is None else str(self.unit_amount_decimal)
            ),
            "package_size": self.package_size,
            "package_rounding": self.package_rounding,
            "tiers": list(self.tiers),
        }

    @property
    def unit_amount_display(self) -> str:
        if self.unit_amount_decimal is None:
            return ""
        return format_money(self.unit_amount_decimal, self.currency, exact=True)


class Subscription(models.Model):
    class IntervalChoices(models.TextChoices):
        DAY = Interval.DAY.value, "Day"
        WEEK = Interval.WEEK.value, "Week"
        MONTH = Interval.MONTH.value, "Month"
        YEAR = Interval.YEAR.value, "Year"

    subscription_id = models.CharField(
        "ID", max_length=40, default=new_subscription_id, editable=False
    )
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="subscriptions")
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    interval = models.CharField(max_length=5, choices=IntervalChoices.choices)
    interval_count = models.PositiveSmallIntegerField(default=1)
    billing_cycle_anchor = models.DateTimeField()
    # When the subscription was started in the portal.
    start_date = models.DateTimeField()
    # Stripe's backdate_start_date: usage from here counts though it predates start_date.
    backdate_start_date = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    # The end of the period in which cancellation was asked for.
    ends_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription_id"], name="subscription_unique_subscription_id"
            ),
            models.CheckConstraint(
                condition=Q(cancel_at_period_end=False, ends_at__isnull=True)
                | Q(cancel_at_period_end=True, ends_at__isnull=False),
                name="subscription_ends_at_matches_cancel",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subscription_id} for {self.customer}"

    def get_absolute_url(self) -> str:
        return reverse("billing:subscription_detail", kwargs={"subscription_pk": self.pk})

    @property
    def effective_start(self) -> Any:
        return self.backdate_start_date or self.start_date

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            anchor=self.billing_cycle_anchor,
            interval=Interval(self.interval),
            count=self.interval_count,
            start=self.effective_start,
            ends_at=self.ends_at,
        )

    @property
    def interval_label(self) -> str:
        unit = self.get_interval_display().lower()
        return (
            f"every {unit}" if self.interval_count == 1 else f"every {self.interval_count} {unit}s"
        )


class SubscriptionItem(models.Model):
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="items")
    price = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="subscription_items")
    # For licensed prices: how many seats/units of the flat fee. Metered items use usage.
    quantity = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "price"], name="subscriptionitem_unique_price"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subscription.subscription_id}: {self.price}"


class Invoice(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINALIZED = "finalized", "Finalized"

    invoice_id = models.CharField("ID", max_length=40, default=new_invoice_id, editable=False)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="invoices"
    )
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.DRAFT)
    # period_end + the grace period: the invoice stays draft until then.
    finalize_after = models.DateTimeField()
    finalized_at = models.DateTimeField(null=True, blank=True)
    subtotal = models.BigIntegerField(null=True, blank=True)
    credits_applied = models.BigIntegerField(null=True, blank=True)
    total = models.BigIntegerField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["invoice_id"], name="invoice_unique_invoice_id"),
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="invoice_unique_subscription_period"
            ),
            models.CheckConstraint(
                condition=Q(status="draft", finalized_at__isnull=True, total__isnull=True)
                | Q(status="finalized", finalized_at__isnull=False, total__isnull=False),
                name="invoice_finalized_has_totals",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "finalize_after"], name="invoice_status_finalize"),
            models.Index(fields=["customer", "-period_start"], name="invoice_customer_period"),
        ]

    def __str__(self) -> str:
        return self.invoice_id

    def get_absolute_url(self) -> str:
        return reverse("billing:invoice_detail", kwargs={"invoice_pk": self.pk})

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT


class InvoiceLine(models.Model):
    """A frozen line of a finalized invoice: what was billed and exactly how."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    price = models.ForeignKey(Price, on_delete=models.PROTECT, related_name="invoice_lines")
    meter = models.ForeignKey(
        Meter, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    description = models.CharField(max_length=300)
    quantity = ExactDecimalField()
    amount = models.BigIntegerField()
    credits_applied = models.BigIntegerField(default=0)
    # The price's pricing and the computation (billed units, tiers used, exact amount).
    computation = models.JSONField(default=dict)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice", "position"], name="invoiceline_unique_position"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.invoice.invoice_id} #{self.position}: {self.description}"


class CreditGrant(models.Model):
    class Category(models.TextChoices):
        PAID = "paid", "Paid"
        PROMOTIONAL = "promotional", "Promotional"

    grant_id = models.CharField("ID", max_length=40, default=new_credit_grant_id, editable=False)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="credit_grants")
    name = models.CharField(max_length=100, blank=True)
    category = models.CharField(max_length=11, choices=Category.choices, default=Category.PAID)
    # 0 is applied first, 100 last.
    priority = models.PositiveSmallIntegerField(default=50)
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES, default="usd")
    amount = models.BigIntegerField()  # minor units granted
    effective_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    # Scope: every metered price, or only `prices`.
    applies_to_all_metered = models.BooleanField(default=True)
    prices = models.ManyToManyField(Price, blank=True, related_name="credit_grants")
    voided_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["priority", "expires_at", "effective_at", "created", "id"]
        constraints = [
            models.UniqueConstraint(fields=["grant_id"], name="creditgrant_unique_grant_id"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="creditgrant_amount_positive"),
            models.CheckConstraint(
                condition=Q(priority__gte=0, priority__lte=100), name="creditgrant_priority_range"
            ),
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=models.F("effective_at")),
                name="creditgrant_expires_after_effective",
            ),
        ]

    def __str__(self) -> str:
        label = self.name or self.grant_id
        return f"{label} ({format_money(self.amount, self.currency)})"

    def get_absolute_url(self) -> str:
        return reverse("billing:customer_billing", kwargs={"customer_pk": self.customer_id})


class CreditTransaction(models.Model):
    """One ledger entry of a credit grant. Never changed or deleted."""

    class Kind(models.TextChoices):
        CREDIT = "credit", "Credit"
        DEBIT = "debit", "Debit"

    class Type(models.TextChoices):
        GRANTED = "credits_granted", "Credits granted"
        APPLIED = "credits_applied", "Credits applied"
        EXPIRED = "credits_expired", "Credits expired"
        VOIDED = "credits_voided", "Credits voided"

    grant = models.ForeignKey(CreditGrant, on_delete=models.PROTECT, related_name="transactions")
    kind = models.CharField(max_length=6, choices=Kind.choices)
    type = models.CharField(max_length=20, choices=Type.choices)
    amount = models.BigIntegerField()  # minor units, always positive
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="credit_transactions"
    )
    invoice_line = models.ForeignKey(
        InvoiceLine, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="credittx_amount_positive"),
            models.CheckConstraint(
                condition=Q(kind="credit", type="credits_granted")
                | Q(
                    kind="debit", type__in=["credits_applied", "credits_expired", "credits_voided"]
                ),
                name="credittx_kind_matches_type",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.grant.grant_id} {self.type} {self.amount}"

    @property
    def signed_amount(self) -> int:
        return self.amount if self.kind == self.Kind.CREDIT else -self.amount
