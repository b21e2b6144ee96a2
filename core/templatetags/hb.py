"""Shared template filters: money, state badges, durations, dates and times."""

from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.dates import format_date, format_datetime
from core.money import format_money

register = template.Library()

BADGES = {
    "held": "badge-warn",
    "scheduled": "badge-brand",
    "provisioning": "badge-brand",
    "active": "badge-ok",
    "releasing": "badge-brand",
    "completed": "",
    "expired": "",
    "canceled": "",
    "failed": "badge-bad",
}


@register.filter
def money(value: Decimal | str | None, currency: str = "usd") -> str:
    """1234.5, "usd" -> "$1,234.50"; negative amounts keep their sign in front."""
    if value in (None, ""):
        return "—"
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError):
        return str(value)
    return format_money(amount, currency)


@register.filter
def state_badge(state: str, label: str | None = None) -> SafeString:
    return format_html(
        '<span class="badge {}" data-state="{}">{}</span>',
        BADGES.get(state, ""),
        state,
        label or state.capitalize(),
    )


@register.filter
def hours_label(hours: int) -> str:
    """36 -> "1 day 12 h", 48 -> "2 days", 5 -> "5 h"."""
    days, rest = divmod(int(hours), 24)
    parts = []
    if days:
        parts.append(f"{days} day{'s' if days != 1 else ''}")
    if rest or not days:
        parts.append(f"{rest} h")
    return " ".join(parts)


@register.filter
def iso_utc(value: datetime | None) -> str:
    """The value as the datetime-local inputs want it, in UTC: 2026-12-01T09:00."""
    return value.strftime("%Y-%m-%dT%H:%M") if value else ""


@register.filter
def when(value: datetime | None) -> str:
    """The one way a moment is shown: "Thu 3 Dec 2026, 10:00 UTC"."""
    return format_datetime(value) if value else "—"


@register.filter
def day(value: date | None) -> str:
    """The one way a date is shown: "Thu 3 Dec 2026" (a moment is taken in UTC)."""
    return format_date(value) if value else "—"
