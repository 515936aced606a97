"""The pricing engine: what a quantity costs under a price, as Stripe computes it.

Pure Python, no database: the models build a ``PriceSpec`` and the estimate, the invoices
and the price form's live example all call ``price_amount``.

Conventions (Stripe's API, reference section 8.4 to 8.5):
- Amounts are in the currency's **minor units** and may carry fractions of a minor unit
  (``unit_amount_decimal`` allows 12 decimal places, e.g. 0.1 cent per API call).
- The quantity billed is max(0, the meter's aggregate): negative usage bills as 0.
- **Per unit**: quantity times unit amount.
- **Package** (``transform_quantity``): ceil or floor of quantity / divide_by, times the unit
  amount. Cannot be combined with tiers.
- **Graduated tiers**: each tier bills the slice of the quantity that falls into it, plus its
  flat amount if the quantity reaches it. **Volume tiers**: the whole quantity bills at the
  one tier the quantity ends in, plus that tier's flat amount.
- Tier bounds: a tier goes "up to and including" ``up_to``; the next starts above it. The
  last tier has no bound (infinity).
- **Zero quantity**: Stripe bills the first tier's flat amount, whichever tier mode.
- Each line's exact amount is rounded half-up to whole minor units (OUR NOTE in §8.5;
  Stripe's own rule is unconfirmed).
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from enum import StrEnum

ZERO = Decimal(0)
# Quantities have at most 15 significant digits and amounts at most 12 decimals, so 60
# digits of working precision keep every product and sum exact.
_CONTEXT = decimal.Context(prec=60, rounding=ROUND_HALF_UP)


class PricingModel(StrEnum):
    PER_UNIT = "per_unit"
    PACKAGE = "package"
    GRADUATED = "graduated"
    VOLUME = "volume"


class PackageRounding(StrEnum):
    UP = "up"
    DOWN = "down"


class PricingError(ValueError):
    """A price whose configuration Stripe would refuse."""


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: int | None  # None: infinity
    unit_amount: Decimal | None = None  # minor units, may be fractional
    flat_amount: Decimal | None = None  # minor units, may be fractional


@dataclass(frozen=True, slots=True)
class PriceSpec:
    model: PricingModel
    unit_amount: Decimal | None = None  # per unit and package
    package_size: int | None = None  # transform_quantity.divide_by
    package_rounding: PackageRounding = PackageRounding.UP
    tiers: tuple[Tier, ...] = ()


@dataclass(frozen=True, slots=True)
class TierUse:
    """One tier's share of a line, for the breakdown shown to people."""

    number: int  # 1-based
    first_unit: Decimal  # lower bound (exclusive of the previous tier's up_to)
    up_to: int | None
    quantity: Decimal  # units billed in this tier
    unit_amount: Decimal
    flat_amount: Decimal
    amount: Decimal  # exact, minor units

    @property
    def range_label(self) -> str:
        lower = _plain(self.first_unit)
        return f"{lower} to {self.up_to}" if self.up_to is not None else f"{lower} and above"


@dataclass(frozen=True, slots=True)
class PricedLine:
    quantity: Decimal  # max(0, aggregate)
    billed_units: Decimal  # after transform_quantity (packages); else == quantity
    exact_amount: Decimal  # minor units, unrounded
    amount: int  # minor units, rounded half-up
    tiers: tuple[TierUse, ...] = ()


def spec_validate(spec: PriceSpec) -> None:
    """Raise ``PricingError`` for a configuration Stripe would refuse."""
    if spec.model in (PricingModel.PER_UNIT, PricingModel.PACKAGE):
        if spec.tiers:
            raise PricingError("Tiers can be used only with graduated or volume pricing.")
        if spec.unit_amount is None:
            raise PricingError("Enter a unit amount.")
        _check_amount(spec.unit_amount, "The unit amount")
        if spec.model is PricingModel.PACKAGE and (
            spec.package_size is None or spec.package_size < 1
        ):
            raise PricingError("The package size (divide by) must be a whole number ≥ 1.")
        return
    if spec.unit_amount is not None or spec.package_size is not None:
        raise PricingError("A transform_quantity (package) cannot be combined with tiers.")
    tiers_validate(spec.tiers)


def tiers_validate(tiers: Sequence[Tier]) -> None:
    if not tiers:
        raise PricingError("Add at least one tier.")
    previous = 0
    for number, tier in enumerate(tiers, start=1):
        last = number == len(tiers)
        if tier.unit_amount is None and tier.flat_amount is None:
            raise PricingError(f"Tier {number} needs a unit amount, a flat amount, or both.")
        for value, label in ((tier.unit_amount, "unit"), (tier.flat_amount, "flat")):
            if value is not None:
                _check_amount(value, f"Tier {number}'s {label} amount")
        if last:
            if tier.up_to is not None:
                raise PricingError("The last tier must go up to infinity.")
        else:
            if tier.up_to is None:
                raise PricingError(f"Only the last tier can go up to infinity (tier {number}).")
            if tier.up_to <= previous:
                raise PricingError(
                    f"Tier {number} must go above {previous}: tiers go up in ascending order."
                )
            previous = tier.up_to


def _check_amount(value: Decimal, label: str) -> None:
    if not value.is_finite() or value < 0:
        raise PricingError(f"{label} must be zero or more.")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -12:
        raise PricingError(f"{label} can have at most 12 decimal places (in minor units).")


def price_amount(spec: PriceSpec, aggregate: Decimal) -> PricedLine:
    """What ``aggregate`` units cost under ``spec``. Negative aggregates bill as zero."""
    quantity = max(ZERO, aggregate)
    with decimal.localcontext(_CONTEXT):
        if spec.model is PricingModel.PER_UNIT:
            assert spec.unit_amount is not None
            exact = quantity * spec.unit_amount
            return _line(quantity, quantity, exact)
        if spec.model is PricingModel.PACKAGE:
            assert spec.unit_amount is not None and spec.package_size
            rounding = ROUND_CEILING if spec.package_rounding is PackageRounding.UP else ROUND_FLOOR
            packages = (quantity / spec.package_size).quantize(Decimal(1), rounding=rounding)
            return _line(quantity, packages, packages * spec.unit_amount)
        if spec.model is PricingModel.GRADUATED:
            uses = _graduated(spec.tiers, quantity)
        else:
            uses = _volume(spec.tiers, quantity)
        exact = sum((use.amount for use in uses), ZERO)
        return _line(quantity, quantity, exact, tuple(uses))


def _line(
    quantity: Decimal, billed: Decimal, exact: Decimal, tiers: tuple[TierUse, ...] = ()
) -> PricedLine:
    rounded = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return PricedLine(
        quantity=quantity, billed_units=billed, exact_amount=exact, amount=rounded, tiers=tiers
    )


def _graduated(tiers: Sequence[Tier], quantity: Decimal) -> list[TierUse]:
    uses: list[TierUse] = []
    lower = ZERO
    for number, tier in enumerate(tiers, start=1):
        unit = tier.unit_amount or ZERO
        flat = tier.flat_amount or ZERO
        if number == 1 and quantity == 0:
            # Stripe always bills the first tier's flat amount when the quantity is 0.
            uses.append(TierUse(1, Decimal(1), tier.up_to, ZERO, unit, flat, flat))
            break
        if quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, Decimal(tier.up_to))
        units = upper - lower
        uses.append(TierUse(number, lower + 1, tier.up_to, units, unit, flat, units * unit + flat))
        if tier.up_to is None:
            break
        lower = Decimal(tier.up_to)
    return uses


def _volume(tiers: Sequence[Tier], quantity: Decimal) -> list[TierUse]:
    lower = ZERO
    for number, tier in enumerate(tiers, start=1):
        if tier.up_to is None or quantity <= tier.up_to:
            unit = tier.unit_amount or ZERO
            flat = tier.flat_amount or ZERO
            first = lower + 1
            return [
                TierUse(number, first, tier.up_to, quantity, unit, flat, quantity * unit + flat)
            ]
        lower = Decimal(tier.up_to)
    raise PricingError("The last tier must go up to infinity.")


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f") if value != value.to_integral() else f"{value:.0f}"
    return text
