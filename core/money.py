"""Money helpers: formatting for people (and, later, Stripe's minor units)."""

from decimal import Decimal

from django.core.exceptions import ValidationError

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


# Currencies Stripe counts in thousandths (its amounts there must also end in 0).
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
# Prices, refunds and credits here are kept to the cent (two places), so only currencies with
# cents can be configured: a price in yen would come to 1,234.56 JPY, which Stripe cannot take.
NOT_TO_THE_CENT = ZERO_DECIMAL | THREE_DECIMAL


def validate_currency(value: str) -> None:
    """A currency a price may be set in: a lowercase ISO 4217 code with cents (usd, eur, gbp).

    Refused where prices are configured (list prices, model prices), so a zero-decimal
    currency is caught by the person setting it rather than by a payment that cannot go
    through."""
    if not (len(value) == 3 and value.isascii() and value.isalpha() and value.islower()):
        raise ValidationError(
            "Give the currency as its three-letter code in lowercase, e.g. usd.",
            code="invalid_currency",
        )
    if value in NOT_TO_THE_CENT:
        kind = "whole units" if value in ZERO_DECIMAL else "thousandths"
        raise ValidationError(
            f"{value.upper()} is counted in {kind}, and prices here are kept to the cent: "
            "choose a currency with cents, e.g. usd, eur or gbp.",
            code="currency_not_to_the_cent",
        )
