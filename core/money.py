"""Money helpers: formatting for people (and, later, Stripe's minor units)."""

from decimal import Decimal

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def format_money(amount: Decimal, currency: str, places: int = 2) -> str:
    """Decimal("1234.5"), "usd" -> "$1,234.50"; other currencies get their code after."""
    symbol = SYMBOLS.get((currency or "").lower())
    sign = "−" if amount < 0 else ""
    text = f"{abs(amount):,.{places}f}"
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency.upper()}"


# Currencies Stripe counts in whole units (no cents).
ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
                          "ugx", "vnd", "vuv", "xaf", "xof", "xpf"})  # fmt: skip


def to_minor(amount: Decimal, currency: str) -> int:
    """Decimal("12.34"), "usd" -> 1234: the integer Stripe wants. Refuses sub-unit remainders."""
    exponent = 0 if currency.lower() in ZERO_DECIMAL else 2
    minor = amount * (10**exponent)
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount} {currency} has more precision than {currency} allows.")
    return int(minor)


def from_minor(minor: int, currency: str) -> Decimal:
    exponent = 0 if currency.lower() in ZERO_DECIMAL else 2
    unit = Decimal(1) if exponent == 0 else Decimal("0.01")
    return (Decimal(minor) / (10**exponent)).quantize(unit)
