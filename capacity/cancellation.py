"""Cancellation: what a cancellation refunds now (a share of the money settled, never of a list
total), and the cancellation itself, before the start."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.guards import require_permission
from accounts.models import User
from accounts.permissions import Permission
from core.errors import Conflict
from core.hooks import hook

from . import lifecycle, pricing
from .models import Reservation

S = Reservation.State

# What a customer writes when canceling is kept to this length (the form says so; the API
# keeps the start of a longer text). Staff reasons follow core.staff.reason_clean instead.
CUSTOMER_REASON_MAX = 500


def _policy_percent(notice: timedelta) -> int:
    """The policy's share for a cancellation made `notice` before the start (0 once started)."""
    if notice <= timedelta(0):
        return 0
    for minimum_notice, percent in settings.CAPACITY_CANCELLATION_POLICY:
        if notice >= minimum_notice:
            return percent
    return 0


def _share(amount: Decimal, percent: int) -> Decimal:
    """`percent` of `amount`, to the cent: the one rounding every refund figure goes through."""
    if percent == 0:
        return Decimal("0.00")
    return pricing.money(amount * percent / 100)


def refund_percent(reservation: Reservation, now: datetime | None = None) -> int:
    """The share of the money settled the cancellation policy gives back at `now` (0 for
    unpaid holds and after the start)."""
    if reservation.state == S.HELD:
        return 0
    return _policy_percent(reservation.starts_at - (now or timezone.now()))


def settled_money(reservation: Reservation) -> Decimal:
    """What the customer actually paid (or was invoiced) for the reservation and still has in
    it: payments less refunds, invoices less credits. Billing keeps that figure, so it is asked
    through RESERVATION_SETTLED_HOOK; a list total or `total` would count hours never paid."""
    amount: Decimal = hook("RESERVATION_SETTLED_HOOK")(reservation)
    return pricing.money(amount)


def refund_amount(reservation: Reservation, now: datetime | None = None) -> Decimal:
    """What canceling at `now` refunds, to the cent: the policy's share of the money settled.
    Billing's settlement pays back exactly this (it becomes `refund_due`)."""
    percent = refund_percent(reservation, now)
    if percent == 0:
        return Decimal("0.00")  # nothing to ask billing
    return _share(settled_money(reservation), percent)


@dataclass(frozen=True)
class RefundStep:
    """One span of the refund schedule: a cancellation from `since` (None: from now) until
    `until` (inclusive; None: the start) gives back `percent`, that is `amount`."""

    since: datetime | None
    until: datetime | None
    percent: int
    amount: Decimal


@dataclass(frozen=True)
class RefundSchedule:
    """What canceling would refund, span by span, once `paid` is settled; after `starts_at`
    nothing is refunded. `steps` is empty when no span is left before the start."""

    starts_at: datetime
    paid: Decimal
    currency: str
    steps: tuple[RefundStep, ...]


def refund_schedule(
    *, starts_at: datetime, paid: Decimal, currency: str, now: datetime | None = None
) -> RefundSchedule:
    """The cancellation policy in this block's dates and money: the same rule and rounding
    `refund_amount` applies, laid out over the time left before `starts_at`. Spans already
    past at `now` are left out."""
    now = now or timezone.now()
    steps: list[RefundStep] = []
    since: datetime | None = None
    for minimum_notice, percent in settings.CAPACITY_CANCELLATION_POLICY:
        # With no notice required the span runs up to the start, which itself refunds nothing.
        until = starts_at - minimum_notice if minimum_notice > timedelta(0) else None
        left = until >= now if until is not None else starts_at > now
        if left:
            steps.append(
                RefundStep(
                    since=since if steps else None,  # a span already begun runs from now
                    until=until,
                    percent=percent,
                    amount=_share(paid, percent),
                )
            )
        since = until
        if until is None:
            break
    return RefundSchedule(starts_at=starts_at, paid=paid, currency=currency, steps=tuple(steps))


CANCELABLE = (S.HELD, S.SCHEDULED)


@dataclass(frozen=True)
class CancellationQuote:
    """The refund a customer's cancellation would give now."""

    amount: Decimal
    percent: int
    currency: str


def _cancel_refusal(reservation: Reservation, now: datetime) -> Conflict | None:
    if reservation.state not in CANCELABLE:
        return Conflict(
            f"This reservation is {reservation.get_state_display().lower()} and can no longer "
            "be canceled here.",
            code="not_cancelable",
        )
    if reservation.state == S.SCHEDULED and reservation.starts_at <= now:
        return Conflict(
            "This reservation has started and can no longer be canceled.", code="not_cancelable"
        )
    return None


def cancellation_quote(
    reservation: Reservation, now: datetime | None = None
) -> CancellationQuote | None:
    """What `reservation_cancel` would refund at `now`, or None when it cannot be canceled."""
    now = now or timezone.now()
    if _cancel_refusal(reservation, now) is not None:
        return None
    return CancellationQuote(
        amount=refund_amount(reservation, now),
        percent=refund_percent(reservation, now),
        currency=reservation.currency,
    )


@transaction.atomic
def reservation_cancel(*, reservation: Reservation, actor: User, reason: str = "") -> Reservation:
    """Cancel before the start. A scheduled reservation gets the policy's share of the money
    settled as `refund_due` (what `cancellation_quote` showed), which billing then pays back."""
    require_permission(
        actor=actor,
        organization=reservation.organization,
        permission=Permission.MANAGE_RESERVATIONS,
    )
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    now = timezone.now()
    refusal = _cancel_refusal(locked, now)
    if refusal is not None:
        raise refusal
    paid = locked.state == S.SCHEDULED
    refund = refund_amount(locked, now) if paid else None
    return lifecycle.reservation_transition(
        reservation=locked,
        to=S.CANCELED,
        actor=actor,
        reason=reason.strip()[:CUSTOMER_REASON_MAX] or "Canceled by the customer.",
        data={
            "refund_due": str(refund) if refund is not None else None,
            "refund_percent": refund_percent(locked, now) if paid else None,
        },
        fields={"refund_due": refund},
    )
