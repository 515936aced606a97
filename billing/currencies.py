"""ISO 4217 currencies a price may use, with the number of decimals of their minor unit.

Amounts are stored the way Stripe's API takes them: in minor units (cents for USD, yen for
JPY, which has none). The exponent is needed only to show amounts and to convert what a
person types in major units ("7.50") into minor units (750).
"""

from __future__ import annotations

from decimal import Decimal

# Stripe's zero-decimal currencies, its usual two-decimal ones, and the three-decimal ones.
CURRENCY_EXPONENTS: dict[str, int] = {
    "usd": 2,
    "eur": 2,
    "gbp": 2,
    "chf": 2,
    "cad": 2,
    "aud": 2,
    "nzd": 2,
    "sek": 2,
    "nok": 2,
    "dkk": 2,
    "pln": 2,
    "czk": 2,
    "huf": 2,
    "inr": 2,
    "brl": 2,
    "mxn": 2,
    "sgd": 2,
    "hkd": 2,
    "cny": 2,
    "zar": 2,
    "jpy": 0,
    "krw": 0,
    "vnd": 0,
    "clp": 0,
    "pyg": 0,
    "ugx": 0,
    "xaf": 0,
    "xof": 0,
    "bhd": 3,
    "jod": 3,
    "kwd": 3,
    "omr": 3,
    "tnd": 3,
}

CURRENCY_SYMBOLS: dict[str, str] = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}

CURRENCY_CHOICES = [(code, code.upper()) for code in sorted(CURRENCY_EXPONENTS)]


def currency_exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency.lower()]
    except KeyError:
        raise ValueError(f"Unknown currency {currency!r}.") from None


def minor_to_major(amount: Decimal | int, currency: str) -> Decimal:
    """750 USD cents -> Decimal('7.50'). Keeps any fractional minor units."""
    exponent = currency_exponent(currency)
    return Decimal(amount).scaleb(-exponent)


def major_to_minor(amount: Decimal, currency: str) -> Decimal:
    """Decimal('7.50') USD -> Decimal('750'). Exact: no rounding."""
    return Decimal(amount).scaleb(currency_exponent(currency))


def format_money(amount: Decimal | int, currency: str, *, exact: bool = False) -> str:
    """An amount in minor units as people read it: '$1,234.50', '¥1,200', '12.345 KWD'.

    With ``exact``, fractional minor units (unit prices such as 0.1 cent) are kept.
    """
    exponent = currency_exponent(currency)
    major = minor_to_major(amount, currency)
    if exact:
        text = _group(major.normalize() if major == major.to_integral() else major, exponent)
    else:
        text = _group(major.quantize(Decimal(1).scaleb(-exponent)), exponent)
    symbol = CURRENCY_SYMBOLS.get(currency.lower())
    if symbol:
        return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"
    return f"{text} {currency.upper()}"


def _group(value: Decimal, exponent: int) -> str:
    sign, _digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    places = max(-exp, exponent)
    text = f"{abs(value):,.{places}f}"
    # Drop trailing zeros beyond the currency's own decimals (0.100000 cents -> 0.001).
    if places > exponent:
        whole, _, frac = text.partition(".")
        frac = frac.rstrip("0")
        frac = frac.ljust(exponent, "0")
        text = f"{whole}.{frac}" if frac else whole
    return f"-{text}" if sign and value != 0 else text
