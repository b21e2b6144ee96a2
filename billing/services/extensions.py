"""Charging for extensions: hold the extra hours, take the money, and let capacity apply them.

The customer's (or staff's charged) extension: capacity holds the hours on the reservation's
nodes (`capacity.extensions.extension_hold`), then the organization's saved card is charged
off-session, or a PaymentIntent is opened for the customer to confirm on the payment page
(3-D Secure included). The end moves only when Stripe reports the payment succeeded
(`payments.payment_sync`, from the webhook or a status check), which calls
`capacity.extensions.extension_apply`. A declined off-session charge gives the hours back at
once; an abandoned payment lapses with the hold (the capacity sweep).
"""

from dataclasses import dataclass
from typing import Any

from accounts.models import User
from capacity import extensions as capacity_extensions
from capacity.models import Extension, Reservation
from core import audit
from core.errors import Conflict, ServiceError
from core.staff import reason_clean, require_staff_permission

from .. import gateway
from ..models import BillingAccount, Payment
from . import payments
from .accounts import require_may_pay

OPERATE = "capacity.operate_reservation"
SAVED_CARD, PAYMENT_INTENT, PAY_PAGE = "saved_card", "payment_intent", "pay_page"


@dataclass(frozen=True)
class ExtensionStarted:
    extension: Extension
    payment: Payment | None
    client_secret: str | None


def _refuse_invoice_terms(reservation: Reservation) -> None:
    if reservation.organization.on_invoice_terms:
        raise Conflict(payments.EXTENSION_ON_INVOICE, code="invoiced")


def _started(
    reservation: Reservation, extension: Extension, attempt_token: str
) -> ExtensionStarted | None:
    """What a repeated request (the same token) started, when its payment reached Stripe."""
    payment = extension.payments.filter(attempt_token=attempt_token).first()
    if payment is None or not payment.stripe_payment_intent_id:
        return None  # not charged yet, or Stripe never answered: charge (again, same key)
    secret: str | None = None
    if payment.status in (Payment.Status.PENDING, Payment.Status.REQUIRES_ACTION):
        secret = payments.client_secret_for_payment(payment)
    extension.refresh_from_db()
    return ExtensionStarted(extension, payment, secret)


def _charge(
    *,
    reservation: Reservation,
    extension: Extension,
    actor: Any,
    attempt_token: str,
    collect: str,
    by_staff: bool,
    fallback: str = PAY_PAGE,
) -> ExtensionStarted:
    if collect == SAVED_CARD:
        account = BillingAccount.objects.filter(organization=reservation.organization).first()
        if account is None or not account.default_payment_method_id:
            collect = fallback
    if collect == PAY_PAGE:
        return ExtensionStarted(extension, None, None)
    if collect == PAYMENT_INTENT:
        payment, secret = payments.payment_intent_open(
            reservation=reservation,
            actor=actor,
            attempt_token=attempt_token,
            extension=extension,
            by_staff=by_staff,
        )
        extension.refresh_from_db()
        return ExtensionStarted(extension, payment, secret)
    try:
        payment = payments.payment_by_saved_card_create(
            reservation=reservation,
            actor=actor,
            attempt_token=attempt_token,
            extension=extension,
            by_staff=by_staff,
        )
    except gateway.GatewayUnavailable:
        raise  # the hold stays: the customer (or a retry) may pay before it lapses
    except gateway.PaymentError as exc:
        # Nobody is at the card to try another: give the hours back now.
        capacity_extensions.extension_cancel(
            extension=extension, actor=None, reason=f"The saved card was declined: {exc.message}"
        )
        raise
    action = (
        payments.client_secret_for_payment(payment)
        if payment.status == Payment.Status.REQUIRES_ACTION
        else None
    )
    extension.refresh_from_db()
    return ExtensionStarted(extension, payment, action)


def extension_start(
    *,
    reservation: Reservation,
    actor: User,
    hours: object,
    attempt_token: str,
    collect: str = SAVED_CARD,
    fallback: str = PAY_PAGE,
) -> ExtensionStarted:
    """A customer asks for `hours` more: hold them and start the payment.

    `collect` says how: the saved card off-session (`fallback` when there is none), a
    PaymentIntent for the client to confirm (the API), or nothing yet (the
    portal's payment page charges the card). A repeated `attempt_token` returns what the first
    request started. Invoice terms are refused for now (ask the account manager)."""
    if collect not in (SAVED_CARD, PAYMENT_INTENT, PAY_PAGE) or fallback == SAVED_CARD:
        raise ServiceError("Unknown way to pay.", param="collect")
    if not attempt_token or len(attempt_token) > 64:
        raise ServiceError("Send a client token of at most 64 characters.", param="client_token")
    require_may_pay(actor=actor, organization=reservation.organization)
    _refuse_invoice_terms(reservation)
    extension = capacity_extensions.extension_hold(
        reservation=reservation, actor=actor, hours=hours, request_token=attempt_token
    )
    if extension.state != Extension.State.HELD or extension.payments.exists():
        started = _started(reservation, extension, attempt_token)
        if started is not None or extension.state != Extension.State.HELD:
            return started or ExtensionStarted(extension, None, None)
    return _charge(
        reservation=reservation,
        extension=extension,
        actor=actor,
        attempt_token=attempt_token,
        collect=collect,
        by_staff=False,
        fallback=fallback,
    )


def extension_charge_by_staff(
    *, reservation: Reservation, actor: Any, hours: object, reason: str, attempt_token: str
) -> ExtensionStarted:
    """Operations extend a block *charged*: the same path as the customer's. The saved card is
    charged off-session; without one a PaymentIntent waits for the customer on the payment
    page, and the end moves once it is paid."""
    require_staff_permission(actor, OPERATE, "extend reservations")
    reason = reason_clean(reason, required=True)
    _refuse_invoice_terms(reservation)
    extension = capacity_extensions.extension_hold(
        reservation=reservation, actor=actor, hours=hours, staff=True
    )
    started = _charge(
        reservation=reservation,
        extension=extension,
        actor=actor,
        attempt_token=attempt_token,
        collect=SAVED_CARD,
        by_staff=True,
        fallback=PAYMENT_INTENT,
    )
    audit.record(
        action="extension.charged_by_staff",
        actor=actor,
        organization=reservation.organization,
        target=reservation,
        data={"extension": started.extension.public_id, "hours": started.extension.hours},
        reason=reason,
    )
    return started
