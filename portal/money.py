"""Money helpers: formatting for people (and, later, Stripe's minor units)."""

from decimal import Decimal

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def format_money(amount: Decimal, currency: str, places: int = 2) -> str:
    """Decimal("1234.5"), "usd" -> "$1,234.50"; other currencies get their code after."""
    symbol = SYMBOLS.get((currency or "").lower())
    sign = "−" if amount < 0 else ""
    text = f"{abs(amount):,.{places}f}"
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency.upper()}"
