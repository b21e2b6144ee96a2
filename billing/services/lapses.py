"""Nothing payable after it lapsed: open PaymentIntents of holds, quotes and extensions that no
longer wait for payment are canceled at Stripe.

A hold or a quote that expires (capacity's lifecycle asks for settlement on entering
`expired`) must not stay payable: a card form left open, or a client holding the client secret,
could otherwise still pay for nodes that were given back. Each open PaymentIntent is canceled
with an idempotency key from our payment's id, then re-read through `payments.payment_sync`,
which records the cancellation (and forgets the card), or, when the customer paid a moment
before, books the late payment, which is confirmed or refunded by the late-payment rules there.
"""

import logging

from django.db.models import Q

from capacity.models import Extension, Reservation
from core.tasks import enqueue_after_commit

from .. import gateway
from ..models import FinanceFlag, Payment
from . import payments
from .flags import flag_raise

logger = logging.getLogger(__name__)
S = Reservation.State
# Payments Stripe may still complete and that can still be canceled there. A failed one is
# among them: after a decline or a failed 3-D Secure the PaymentIntent waits for another card,
# and the page holding its client secret could still confirm it. A `processing` payment cannot
# be canceled: its outcome is booked (or refunded) when it arrives.
OPEN = (Payment.Status.PENDING, Payment.Status.REQUIRES_ACTION, Payment.Status.FAILED)


def _lapsed_payments(reservation: Reservation) -> list[Payment]:
    """The open payments of a reservation that nothing waits for any more: its own once it is
    no longer held (expired, or paid by another attempt), an extension's once it is no longer
    held (lapsed, canceled, paid)."""
    # Read from the rows as they are now, not from the instance the caller holds.
    stale = (Q(extension__isnull=False) & ~Q(extension__state=Extension.State.HELD)) | (
        Q(extension__isnull=True) & ~Q(reservation__state=S.HELD)
    )
    return list(
        Payment.objects.filter(
            stale,
            reservation=reservation,
            status__in=OPEN,
            stripe_payment_intent_id__isnull=False,
        ).order_by("pk")
    )


def reservations_with_lapsed_payments() -> set[int]:
    """For the settlement sweep: reservations with a PaymentIntent still open at Stripe for a
    hold, quote or extension that lapsed (the settling task was lost, or Stripe was away)."""
    lapsed = Payment.objects.filter(
        Q(extension__isnull=True, reservation__state=S.EXPIRED)
        | Q(extension__state__in=[Extension.State.LAPSED, Extension.State.CANCELED]),
        status__in=OPEN,
        stripe_payment_intent_id__isnull=False,
    ).exclude(flags__kind=FinanceFlag.Kind.RECONCILIATION)  # finance has it: not every sweep
    return set(lapsed.values_list("reservation_id", flat=True))


def lapsed_payments_cancel(*, reservation: Reservation) -> int:
    """Cancel at Stripe the open PaymentIntents of `reservation` that nothing waits for; returns
    how many were canceled. Safe to run any number of times: the key is our payment's id, and
    one Stripe no longer lets us cancel is re-read (a success there is booked as a late
    payment). Stripe out of reach raises GatewayUnavailable, for the task to retry."""
    canceled = 0
    for payment in _lapsed_payments(reservation):
        intent_id = payment.stripe_payment_intent_id
        assert intent_id is not None  # filtered on above
        try:
            gateway.payment_intent_cancel(
                payment_intent_id=intent_id, idempotency_key=f"cancel:{payment.public_id}"
            )
        except gateway.GatewayUnavailable:
            raise
        except gateway.PaymentError as exc:
            # Succeeded, processing or already canceled at Stripe: what it says now decides.
            logger.info("PaymentIntent %s not canceled: %s", intent_id, exc.message)
        try:
            synced = payments.payment_sync(payment_intent_id=intent_id)
        except gateway.GatewayUnavailable:
            raise
        except gateway.PaymentError as exc:
            # Stripe does not know it (any more): finance looks, and the rest still settles.
            flag_raise(
                FinanceFlag.Kind.RECONCILIATION,
                intent_id,
                f"Could not cancel or read PaymentIntent {intent_id} of payment "
                f"{payment.public_id}, left open by {reservation.public_id}: {exc.message}",
                payment=payment,
            )
            continue
        if synced is not None and synced.status == Payment.Status.CANCELED:
            canceled += 1
    return canceled


def reservation_lapse_settle(reservation: Reservation) -> None:
    """The part of settling a reservation that lapses own: see `lapsed_payments_cancel`."""
    lapsed_payments_cancel(reservation=reservation)


def extension_lapse_enqueue(reservation_id: int) -> None:
    """EXTENSION_LAPSE_HOOK: capacity calls this in the transaction that ended an extension's
    hold unpaid; once that commits, settling the reservation cancels the extension's open
    PaymentIntents (and does nothing else a settled reservation does not already have)."""
    enqueue_after_commit("billing.settle_reservation", reservation_id=reservation_id)
