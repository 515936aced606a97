"""Forms for prices, subscriptions and credit grants.

People type amounts in the currency's major units ("7.50", "0.001"); the forms convert
them to minor units, which is how prices are stored (Stripe's ``unit_amount_decimal``).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from billing.currencies import CURRENCY_CHOICES, major_to_minor, minor_to_major
from billing.models import CreditGrant, Price, Subscription
from billing.periods import MAX_INTERVAL_COUNT, Interval
from billing.pricing import PriceSpec, PricingError, PricingModel, Tier, spec_validate
from meters.models import Meter

MAX_TIERS = 20
DEFAULT_TIER_ROWS = 3
AMOUNT_ATTRS = {"inputmode": "decimal", "autocomplete": "off", "class": "num"}


def _major_amount(value: Any, currency: str, label: str) -> Decimal | None:
    """'7.50' in USD -> Decimal('750'); None when blank; at most 12 decimals in minor units."""
    text = str(value or "").strip().replace(",", "")
    if not text:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValidationError(f"{label}: enter a number, like 0.05.", code="invalid") from None
    if not amount.is_finite() or amount < 0:
        raise ValidationError(f"{label}: enter zero or more.", code="invalid")
    minor = major_to_minor(amount, currency)
    exponent = minor.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -12:
        raise ValidationError(
            f"{label}: at most 12 decimal places of the minor unit "
            f"({12 + _exponent(currency)} decimals of {currency.upper()}).",
            code="too_many_decimals",
        )
    return minor.normalize() if minor == minor.to_integral() else minor


def _exponent(currency: str) -> int:
    from billing.currencies import currency_exponent

    return currency_exponent(currency)


def _major_text(minor: Decimal | None, currency: str) -> str:
    if minor is None:
        return ""
    major = minor_to_major(minor, currency)
    return format(major.normalize(), "f") if major != major.to_integral() else f"{major:.0f}"


class PriceForm(forms.Form):
    """A price with its tiers. Tier rows come as ``tier-<n>-up_to|unit|flat`` fields."""

    nickname = forms.CharField(
        max_length=100,
        required=False,
        help_text="A name people see on estimates and invoices, e.g. “API calls, Pro plan”.",
    )
    usage_type = forms.ChoiceField(
        label="Type",
        choices=Price.UsageType.choices,
        initial=Price.UsageType.METERED,
        widget=forms.RadioSelect,
        help_text="Metered prices bill a meter's usage in arrears; licensed prices are a fixed "
        "fee per period.",
    )
    meter = forms.ModelChoiceField(
        queryset=Meter.objects.filter(status=Meter.Status.ACTIVE),
        required=False,
        to_field_name="meter_id",
        help_text="The usage this price bills. Deactivated meters can't take prices.",
    )
    currency = forms.ChoiceField(choices=CURRENCY_CHOICES, initial="usd")
    pricing_model = forms.ChoiceField(
        label="Pricing model",
        choices=Price.Model.choices,
        initial=PricingModel.PER_UNIT,
        help_text="Per unit: every unit costs the same. Package: units are sold in packages "
        "(e.g. per 1,000 calls). Graduated: each tier bills the units that fall into it. "
        "Volume: all units bill at the tier the total ends in.",
    )
    unit_amount = forms.CharField(
        label="Price per unit (or per package)",
        required=False,
        widget=forms.TextInput(attrs=AMOUNT_ATTRS),
        help_text="In the currency's main unit: 0.001 is a tenth of a cent in USD.",
    )
    package_size = forms.IntegerField(
        label="Units per package",
        required=False,
        min_value=1,
        help_text="Stripe's transform_quantity divide_by. Cannot be combined with tiers.",
    )
    package_rounding = forms.ChoiceField(
        label="Partial packages",
        choices=Price.Rounding.choices,
        initial=Price.Rounding.UP,
        required=False,
        help_text="Round up bills a started package in full; round down bills only full ones.",
    )

    def __init__(self, *args: Any, tier_rows: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        data = self.data if self.is_bound else {}
        submitted = 0
        for index in range(MAX_TIERS):
            if any(data.get(f"tier-{index}-{part}") for part in ("up_to", "unit", "flat")):
                submitted = index + 1
        initial_tiers = self.initial.get("tiers") or []
        self.tier_rows = min(
            MAX_TIERS, max(tier_rows or 0, submitted, len(initial_tiers), DEFAULT_TIER_ROWS)
        )
        for index in range(self.tier_rows):
            self.fields[f"tier-{index}-up_to"] = forms.CharField(
                required=False,
                label=f"Tier {index + 1} up to",
                widget=forms.TextInput(
                    attrs={
                        "inputmode": "numeric",
                        "class": "num",
                        "placeholder": "∞",
                        "aria-label": f"Tier {index + 1} up to",
                    }
                ),
            )
            self.fields[f"tier-{index}-unit"] = forms.CharField(
                required=False,
                label=f"Tier {index + 1} per unit",
                widget=forms.TextInput(
                    attrs={**AMOUNT_ATTRS, "aria-label": f"Tier {index + 1} per unit"}
                ),
            )
            self.fields[f"tier-{index}-flat"] = forms.CharField(
                required=False,
                label=f"Tier {index + 1} flat fee",
                widget=forms.TextInput(
                    attrs={**AMOUNT_ATTRS, "aria-label": f"Tier {index + 1} flat fee"}
                ),
            )
        for index, row in enumerate(initial_tiers):
            self.initial.setdefault(f"tier-{index}-up_to", row.get("up_to", ""))
            self.initial.setdefault(f"tier-{index}-unit", row.get("unit", ""))
            self.initial.setdefault(f"tier-{index}-flat", row.get("flat", ""))

    @property
    def tier_fields(self) -> list[tuple[int, Any, Any, Any]]:
        return [
            (
                index + 1,
                self[f"tier-{index}-up_to"],
                self[f"tier-{index}-unit"],
                self[f"tier-{index}-flat"],
            )
            for index in range(self.tier_rows)
        ]

    @property
    def is_tiered(self) -> bool:
        return self.data.get("pricing_model", self.initial.get("pricing_model")) in (
            PricingModel.GRADUATED,
            PricingModel.VOLUME,
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        currency = cleaned.get("currency") or "usd"
        model = cleaned.get("pricing_model")
        usage_type = cleaned.get("usage_type")
        if usage_type == Price.UsageType.METERED and not cleaned.get("meter"):
            self.add_error("meter", "Choose the meter whose usage this price bills.")
        if usage_type == Price.UsageType.LICENSED:
            cleaned["meter"] = None
            if model != PricingModel.PER_UNIT:
                self.add_error("pricing_model", "A licensed price is a flat fee: use per unit.")
        tiers: list[Tier] = []
        try:
            unit = _major_amount(cleaned.get("unit_amount"), currency, "Price per unit")
            if model in (PricingModel.GRADUATED, PricingModel.VOLUME):
                tiers = self._clean_tiers(currency)
                unit = None
                cleaned["package_size"] = None
            elif model == PricingModel.PER_UNIT:
                cleaned["package_size"] = None
            cleaned["unit_amount_decimal"] = unit
            cleaned["tiers"] = tiers
            if model:
                spec_validate(self.spec_from(cleaned))
        except ValidationError as error:
            self.add_error(None, error)
        except PricingError as error:
            field = None
            if "unit amount" in str(error).lower() and not tiers:
                field = "unit_amount"
            elif "package size" in str(error).lower():
                field = "package_size"
            self.add_error(field, str(error))
        return cleaned

    def _clean_tiers(self, currency: str) -> list[Tier]:
        tiers: list[Tier] = []
        for index in range(self.tier_rows):
            up_to_text = (self.cleaned_data.get(f"tier-{index}-up_to") or "").strip()
            unit_text = self.cleaned_data.get(f"tier-{index}-unit")
            flat_text = self.cleaned_data.get(f"tier-{index}-flat")
            if not (up_to_text or unit_text or flat_text):
                continue  # an empty row
            number = len(tiers) + 1
            if up_to_text.lower() in ("", "inf", "∞", "infinity"):
                up_to = None
            else:
                try:
                    up_to = int(up_to_text.replace(",", ""))
                except ValueError:
                    raise ValidationError(
                        f"Tier {number}: “up to” is a whole number, or empty for infinity.",
                        code="invalid_up_to",
                    ) from None
                if up_to < 1:
                    raise ValidationError(
                        f"Tier {number}: “up to” must be 1 or more.", code="invalid_up_to"
                    )
            tiers.append(
                Tier(
                    up_to=up_to,
                    unit_amount=_major_amount(unit_text, currency, f"Tier {number} per unit"),
                    flat_amount=_major_amount(flat_text, currency, f"Tier {number} flat fee"),
                )
            )
        return tiers

    @staticmethod
    def spec_from(cleaned: dict[str, Any]) -> PriceSpec:
        model = PricingModel(cleaned["pricing_model"])
        return PriceSpec(
            model=model,
            unit_amount=cleaned.get("unit_amount_decimal"),
            package_size=cleaned.get("package_size") if model is PricingModel.PACKAGE else None,
            package_rounding=cleaned.get("package_rounding") or "up",  # type: ignore[arg-type]
            tiers=tuple(cleaned.get("tiers") or ()),
        )

    def service_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "nickname": data["nickname"],
            "currency": data["currency"],
            "usage_type": data["usage_type"],
            "pricing_model": data["pricing_model"],
            "meter": data.get("meter"),
            "unit_amount_decimal": data.get("unit_amount_decimal"),
            "package_size": data.get("package_size"),
            "package_rounding": data.get("package_rounding") or Price.Rounding.UP,
            "tiers": data.get("tiers") or [],
        }

    @classmethod
    def initial_from_price(cls, price: Price) -> dict[str, Any]:
        """A form filled from an existing price, for its next version."""
        return {
            "nickname": price.nickname,
            "usage_type": price.usage_type,
            "meter": price.meter.meter_id if price.meter else None,
            "currency": price.currency,
            "pricing_model": price.pricing_model,
            "unit_amount": _major_text(price.unit_amount_decimal, price.currency),
            "package_size": price.package_size,
            "package_rounding": price.package_rounding,
            "tiers": [
                {
                    "up_to": "" if tier.up_to is None else tier.up_to,
                    "unit": _major_text(tier.unit_amount, price.currency),
                    "flat": _major_text(tier.flat_amount, price.currency),
                }
                for tier in price.tier_list
            ],
        }


class SubscriptionForm(forms.Form):
    """Datetimes are read in UTC (the portal's time zone)."""

    prices = forms.ModelMultipleChoiceField(
        queryset=Price.objects.filter(active=True).select_related("meter"),
        widget=forms.CheckboxSelectMultiple,
        help_text="One or more prices, all in one currency.",
    )
    interval = forms.ChoiceField(
        label="Bill every", choices=Subscription.IntervalChoices.choices, initial=Interval.MONTH
    )
    interval_count = forms.IntegerField(
        label="Number of intervals",
        min_value=1,
        max_value=max(MAX_INTERVAL_COUNT.values()),
        initial=1,
        help_text="E.g. 3 months for quarterly billing. At most 3 years.",
    )
    start_date = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. Empty: now. Usage before the start is not billed.",
    )
    billing_cycle_anchor = forms.DateTimeField(
        label="Billing cycle anchor",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. The date periods start on; empty: the start date. An anchor on the 31st "
        "bills on the last day of shorter months.",
    )
    backdate_start_date = forms.DateTimeField(
        label="Backdate start to",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. Optional: bill usage recorded before the start date, from this date.",
    )
    licensed_quantity = forms.IntegerField(
        label="Quantity for flat fees",
        min_value=1,
        initial=1,
        required=False,
        help_text="How many of each licensed (flat fee) price.",
    )


class CreditGrantForm(forms.Form):
    name = forms.CharField(max_length=100, required=False)
    amount = forms.CharField(
        label="Amount",
        widget=forms.TextInput(attrs=AMOUNT_ATTRS),
        help_text="In the currency's main unit, e.g. 100.00.",
    )
    currency = forms.ChoiceField(choices=CURRENCY_CHOICES, initial="usd")
    category = forms.ChoiceField(choices=CreditGrant.Category.choices, initial="paid")
    priority = forms.IntegerField(
        min_value=0,
        max_value=100,
        initial=50,
        help_text="0 is applied first, 100 last.",
    )
    effective_at = forms.DateTimeField(
        label="Effective from",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. Empty: now.",
    )
    expires_at = forms.DateTimeField(
        label="Expires at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. Empty: never.",
    )
    prices = forms.ModelMultipleChoiceField(
        queryset=Price.objects.filter(usage_type=Price.UsageType.METERED).select_related("meter"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked to apply to every metered price.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        currency = cleaned.get("currency") or "usd"
        try:
            minor = _major_amount(cleaned.get("amount"), currency, "Amount")
        except ValidationError as error:
            self.add_error("amount", error)
            return cleaned
        if minor is None or minor <= 0:
            self.add_error("amount", "Grant a positive amount.")
        elif minor != minor.to_integral():
            self.add_error("amount", f"Credits are whole minor units of {currency.upper()}.")
        else:
            cleaned["amount_minor"] = int(minor)
        return cleaned
