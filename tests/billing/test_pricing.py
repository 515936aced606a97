"""The pricing engine against every worked example of reference §8.5, plus properties."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.currencies import format_money, major_to_minor
from billing.pricing import (
    PackageRounding,
    PriceSpec,
    PricingError,
    PricingModel,
    Tier,
    price_amount,
    spec_validate,
)

D = Decimal

# Reference §8.5: tiers 1-5 @ $7, 6-10 @ $6.50, 11+ @ $6 (amounts in cents).
SIMPLE_TIERS = (Tier(5, D(700)), Tier(10, D(650)), Tier(None, D(600)))
# Reference §8.5: flat amounts per tier.
FLAT_TIERS = (
    Tier(5, D(500), D(1000)),
    Tier(10, D(400), D(2000)),
    Tier(15, D(300), D(3000)),
    Tier(20, D(200), D(4000)),
    Tier(None, D(100), D(5000)),
)


def cents(spec: PriceSpec, quantity: int | str) -> int:
    return price_amount(spec, D(quantity)).amount


@pytest.mark.parametrize(
    ("quantity", "expected_dollars"),
    [(1, "7"), (5, "35"), (6, "39"), (20, "120"), (25, "150")],
)
def test_volume_table(quantity: int, expected_dollars: str) -> None:
    spec = PriceSpec(model=PricingModel.VOLUME, tiers=SIMPLE_TIERS)
    assert cents(spec, quantity) == int(D(expected_dollars) * 100)


@pytest.mark.parametrize(
    ("quantity", "expected_dollars"),
    [(1, "7"), (5, "35"), (6, "41.50"), (20, "127.50"), (25, "157.50")],
)
def test_graduated_table(quantity: int, expected_dollars: str) -> None:
    spec = PriceSpec(model=PricingModel.GRADUATED, tiers=SIMPLE_TIERS)
    assert cents(spec, quantity) == int(D(expected_dollars) * 100)


def test_flat_amount_volume_q12_is_66_dollars() -> None:
    spec = PriceSpec(model=PricingModel.VOLUME, tiers=FLAT_TIERS)
    line = price_amount(spec, D(12))
    assert line.amount == 6600
    assert [(use.number, use.quantity) for use in line.tiers] == [(3, D(12))]


def test_flat_amount_graduated_q12_is_111_dollars_with_every_reached_tier() -> None:
    spec = PriceSpec(model=PricingModel.GRADUATED, tiers=FLAT_TIERS)
    line = price_amount(spec, D(12))
    assert line.amount == 11100
    assert [(use.number, use.quantity, use.amount) for use in line.tiers] == [
        (1, D(5), D(3500)),
        (2, D(5), D(4000)),
        (3, D(2), D(3600)),
    ]


@pytest.mark.parametrize("model", [PricingModel.GRADUATED, PricingModel.VOLUME])
def test_zero_quantity_bills_the_first_tiers_flat_amount(model: PricingModel) -> None:
    spec = PriceSpec(model=model, tiers=FLAT_TIERS)
    line = price_amount(spec, D(0))
    assert line.amount == 1000
    assert [use.number for use in line.tiers] == [1]


@pytest.mark.parametrize("model", [PricingModel.GRADUATED, PricingModel.VOLUME])
def test_zero_quantity_workaround_tier_bills_nothing(model: PricingModel) -> None:
    # "set up an up_to=1 tier with an unit_amount equal to the flat rate and omit the flat"
    tiers = (Tier(1, D(1000)), Tier(None, D(500), D(0)))
    spec = PriceSpec(model=model, tiers=tiers)
    assert cents(spec, 0) == 0
    assert cents(spec, 1) == 1000


def test_package_150_minutes_by_60_rounded_up_is_30_dollars() -> None:
    spec = PriceSpec(
        model=PricingModel.PACKAGE,
        unit_amount=D(1000),
        package_size=60,
        package_rounding=PackageRounding.UP,
    )
    line = price_amount(spec, D(150))
    assert line.billed_units == 3
    assert line.amount == 3000


def test_package_rounding_down() -> None:
    spec = PriceSpec(
        model=PricingModel.PACKAGE,
        unit_amount=D(1000),
        package_size=60,
        package_rounding=PackageRounding.DOWN,
    )
    assert cents(spec, 150) == 2000


def test_hypernian_4_cents_per_100_tokens() -> None:
    spec = PriceSpec(model=PricingModel.PACKAGE, unit_amount=D(4), package_size=100)
    assert cents(spec, 1) == 4
    assert cents(spec, 100) == 4
    assert cents(spec, 101) == 8


def test_flat_fee_plus_overage_at_a_tenth_of_a_cent() -> None:
    spec = PriceSpec(
        model=PricingModel.GRADUATED,
        tiers=(Tier(100_000, D(0)), Tier(None, D("0.1"))),
    )
    assert cents(spec, 100_000) == 0
    assert cents(spec, 150_000) == 5000  # 50,000 x 0.1 cent = $50
    assert cents(spec, 100_004) == 0  # 0.4¢ rounds half-up to 0
    assert cents(spec, 100_005) == 1  # 0.5¢ rounds half-up to 1


def test_per_unit_with_fractional_unit_amount_rounds_half_up() -> None:
    spec = PriceSpec(model=PricingModel.PER_UNIT, unit_amount=D("0.125"))
    assert cents(spec, 4) == 1  # 0.5 -> 1
    assert cents(spec, 3) == 0  # 0.375 -> 0
    assert price_amount(spec, D(3)).exact_amount == D("0.375")


def test_negative_usage_bills_as_zero() -> None:
    spec = PriceSpec(model=PricingModel.PER_UNIT, unit_amount=D(100))
    line = price_amount(spec, D(-42))
    assert line.quantity == 0
    assert line.amount == 0


def test_decimal_quantities_in_graduated_tiers() -> None:
    spec = PriceSpec(model=PricingModel.GRADUATED, tiers=SIMPLE_TIERS)
    # 5 @ 700 + 0.5 @ 650 = 3825
    assert cents(spec, "5.5") == 3825


def test_jpy_has_no_minor_unit() -> None:
    assert major_to_minor(D("1200"), "jpy") == 1200
    assert format_money(1200, "jpy") == "¥1,200"
    assert format_money(123456, "usd") == "$1,234.56"
    assert format_money(D("0.1"), "usd", exact=True) == "$0.001"
    assert format_money(12345, "kwd") == "12.345 KWD"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (PriceSpec(model=PricingModel.GRADUATED, tiers=()), "at least one tier"),
        (
            PriceSpec(model=PricingModel.GRADUATED, tiers=(Tier(10, D(1)), Tier(5, D(1)))),
            "last tier must go up to infinity",
        ),
        (
            PriceSpec(
                model=PricingModel.GRADUATED,
                tiers=(Tier(10, D(1)), Tier(5, D(1)), Tier(None, D(1))),
            ),
            "ascending",
        ),
        (
            PriceSpec(model=PricingModel.VOLUME, tiers=(Tier(10, D(1)), Tier(None))),
            "Tier 2 needs a unit amount, a flat amount, or both",
        ),
        (
            PriceSpec(model=PricingModel.VOLUME, tiers=(Tier(None, D(1)), Tier(None, D(1)))),
            "Only the last tier",
        ),
        (
            PriceSpec(model=PricingModel.PER_UNIT, unit_amount=D("0.0000000000001")),
            "12 decimal places",
        ),
        (
            PriceSpec(
                model=PricingModel.GRADUATED,
                unit_amount=D(1),
                package_size=10,
                tiers=(Tier(None, D(1)),),
            ),
            "cannot be combined with tiers",
        ),
        (PriceSpec(model=PricingModel.PACKAGE, unit_amount=D(1), package_size=0), "≥ 1"),
    ],
)
def test_invalid_specs_are_refused(spec: PriceSpec, message: str) -> None:
    with pytest.raises(PricingError, match=message):
        spec_validate(spec)


# --- Properties -------------------------------------------------------------------------------
amounts = st.decimals(min_value=0, max_value=10_000, places=4, allow_nan=False)
quantities = st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False)


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.integers(1, 10**6), min_size=0, max_size=6)))
    ups: list[int | None] = [*bounds, None]
    tiers = []
    for up_to in ups:
        unit = draw(st.none() | amounts)
        flat = draw(amounts) if unit is None else draw(st.none() | amounts)
        tiers.append(Tier(up_to, unit, flat))
    return tuple(tiers)


@given(tiers=tier_lists(), quantity=quantities)
def test_graduated_equals_the_sum_of_its_tier_slices(
    tiers: tuple[Tier, ...], quantity: Decimal
) -> None:
    """Slow answer: walk each tier's integer-bounded interval and bill what falls in it."""
    spec = PriceSpec(model=PricingModel.GRADUATED, tiers=tiers)
    spec_validate(spec)
    expected = D(0)
    lower = D(0)
    for index, tier in enumerate(tiers):
        upper = D(tier.up_to) if tier.up_to is not None else None
        in_tier = quantity - lower if upper is None else min(quantity, upper) - lower
        if in_tier > 0 or (index == 0 and quantity == 0):
            expected += max(in_tier, D(0)) * (tier.unit_amount or 0) + (tier.flat_amount or 0)
        if upper is None or quantity <= upper:
            break
        lower = upper
    line = price_amount(spec, quantity)
    assert line.exact_amount == expected
    assert line.amount == int(expected.quantize(D(1), rounding=ROUND_HALF_UP))
    assert sum(use.quantity for use in line.tiers) == quantity


@given(unit=amounts, flat=st.none() | amounts, quantity=quantities)
def test_volume_and_graduated_agree_on_a_single_tier(
    unit: Decimal, flat: Decimal | None, quantity: Decimal
) -> None:
    tiers = (Tier(None, unit, flat),)
    graduated = price_amount(PriceSpec(model=PricingModel.GRADUATED, tiers=tiers), quantity)
    volume = price_amount(PriceSpec(model=PricingModel.VOLUME, tiers=tiers), quantity)
    assert graduated.exact_amount == volume.exact_amount
    assert graduated.amount == volume.amount


@given(
    unit=st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False),
    size=st.integers(1, 10_000),
    quantity=quantities,
)
def test_package_rounded_up_never_under_bills(unit: Decimal, size: int, quantity: Decimal) -> None:
    spec = PriceSpec(model=PricingModel.PACKAGE, unit_amount=unit, package_size=size)
    line = price_amount(spec, quantity)
    assert line.billed_units * size >= quantity
    assert (line.billed_units - 1) * size < quantity or quantity == 0
    # What the usage would cost at the package's per-unit rate, never more than billed.
    assert line.exact_amount >= quantity * unit / size
