"""The cancellation policy in a block's own dates and money, shown before it is paid."""

from datetime import datetime
from decimal import Decimal

from django import template

from capacity.cancellation import refund_schedule

register = template.Library()


@register.inclusion_tag("capacity/_refund_policy.html")
def refund_policy(
    starts_at: datetime,
    paid: Decimal,
    currency: str,
    starts_on_payment: bool = False,
    started: bool = False,
) -> dict[str, object]:
    """`paid` is what the customer will have paid for the block once this payment succeeds;
    a block that starts the minute it is paid (or has started) can no longer be canceled."""
    closed = starts_on_payment or started
    return {
        "schedule": None
        if closed
        else refund_schedule(starts_at=starts_at, paid=paid, currency=currency),
        "starts_on_payment": starts_on_payment,
        "started": started,
        "currency": currency,
    }
