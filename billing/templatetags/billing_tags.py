"""Money in templates: ``{{ amount|money:currency }}`` and ``{{ unit|money_exact:currency }}``."""

from __future__ import annotations

from decimal import Decimal

from django import template

from billing.currencies import format_money

register = template.Library()


@register.filter
def money(amount: Decimal | int | str | None, currency: str) -> str:
    """Whole minor units as people read them: 12345, "usd" -> "$123.45"."""
    if amount is None or amount == "":
        return "—"
    return format_money(Decimal(str(amount)), currency)


@register.filter
def money_exact(amount: Decimal | int | str | None, currency: str) -> str:
    """Keeps fractions of a minor unit: Decimal("0.1"), "usd" -> "$0.001"."""
    if amount is None or amount == "":
        return "—"
    return format_money(Decimal(str(amount)), currency, exact=True)


@register.filter
def quantity(value: Decimal | int | str | None) -> str:
    """A usage quantity without trailing zeros, grouped: 1234.500 -> "1,234.5"."""
    if value is None or value == "":
        return "—"
    number = Decimal(str(value))
    if number == number.to_integral():
        return f"{number:,.0f}"
    text = format(number.normalize(), ",f")
    return text


@register.filter
def percent(fraction: Decimal | float | None) -> str:
    if fraction is None:
        return "—"
    return f"{Decimal(str(fraction)) * 100:.0f}%"
