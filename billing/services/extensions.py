"""Charging for extensions: hold the extra hours, take the money, and let capacity apply them.

The customer's (or staff's charged) extension: capacity holds the hours on the reservation's
nodes (`capacity.extensions.extension_hold`), then the organization's saved card is charged
off-session, or a PaymentIntent is opened for the customer to confirm on the payment page
(3-D Secure included). The end moves only when Stripe reports the payment succeeded
(`payments.payment_sync`, from the webhook or a status check), which calls
`capacity.extensions.extension_confirm_paid` (a late payment is re-priced there). A declined
off-session charge gives the hours back at once; an abandoned payment lapses with the hold
(the capacity sweep).

On invoice terms the extra hours are checked against the credit limit under the
organization's lock (in the transaction that holds them, so two extensions cannot both fit in
the same headroom), get an invoice of their own, and are applied once Stripe has issued it:
that secures them, as the invoice does for a block confirmed on invoice terms. When Stripe is
away the hours stay held and the settlement sweep sends the invoice later; a hold that lapses
first takes its unsent invoice with it.
"""

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from accounts import credit
from accounts.models import User
from accounts.services.organizations import organization_lock
from capacity import extensions as capacity_extensions
from capacity.models import Extension, Reservation
from core import audit
from core.errors import Conflict, ServiceError
from core.staff import reason_clean, require_staff_permission

from .. import gateway, selectors
from ..models import BillingAccount, Invoice, Payment
from . import invoices, payments
from .accounts import require_may_pay

logger = logging.getLogger(__name__)

OPERATE = "capacity.operate_reservation"
SAVED_CARD, PAYMENT_INTENT, PAY_PAGE = "saved_card", "payment_intent", "pay_page"


@dataclass(frozen=True)
class ExtensionStarted:
    extension: Extension
    payment: Payment | None
    client_secret: str | None
    invoice: Invoice | None = None


def _require_not_refused(reservation: Reservation) -> None:
    """More hours are sold like a new block: not while the organization is refused them (an
    invoice long overdue or uncollectible, a dispute lost)."""
    refused = selectors.reservations_refused_for_org(reservation.organization)
    if refused:
        raise Conflict(refused, code="reservations_refused")


def _on_invoice(
    *, reservation: Reservation, actor: Any, hours: object, attempt_token: str, staff: bool
) -> ExtensionStarted:
    """Hold the hours within the credit limit and write their invoice, then send it."""
    with transaction.atomic():
        organization = organization_lock(reservation.organization)  # before the pool's lock
        extension = capacity_extensions.extension_hold(
            reservation=reservation,
            actor=actor,
            hours=hours,
            staff=staff,
            request_token=attempt_token,
        )
        invoice = Invoice.objects.filter(extension=extension).first()
        # (A held extension with a card payment was started before the move to invoice terms.)
        if (
            invoice is None
            and extension.state == Extension.State.HELD
            and not extension.payments.exists()
        ):
            credit.require_credit(organization=organization, amount=extension.price)
            invoice = invoices.extension_invoice_open(extension=extension)
    if invoice is None:
        return ExtensionStarted(extension, None, None)
    return extension_invoice_settle(invoice=invoice)


def extension_invoice_settle(*, invoice: Invoice) -> ExtensionStarted:
    """Send an extension's invoice and apply the extension once it is issued. Idempotent: the
    request that held it, a retry and the settlement sweep all end here.

    An invoice not sent while its extension lapsed or was canceled is abandoned (nothing was
    booked); one sent for an extension that can no longer be applied (the reservation was
    canceled meanwhile, the lapsed hours were taken) is credited in full (voided)."""
    assert invoice.extension_id is not None, "a block's invoice is settled with the block"
    extension = Extension.objects.select_related("reservation").get(pk=invoice.extension_id)
    if not invoice.stripe_invoice_id and extension.state != Extension.State.HELD:
        invoices.invoice_abandon(
            invoice=invoice,
            reason=f"Extension {extension.public_id} is {extension.get_state_display().lower()}.",
        )
        invoice.refresh_from_db()
        return ExtensionStarted(extension, None, None, invoice)
    try:
        invoice = invoices.invoice_send(invoice)
    except gateway.PaymentError as exc:  # counted; the hours stay held and the sweep retries
        logger.warning("invoice for extension %s failed: %s", extension.public_id, exc.message)
        invoice.refresh_from_db()
        return ExtensionStarted(extension, None, None, invoice)
    if extension.state not in (Extension.State.PAID, Extension.State.COMPLIMENTARY):
        try:
            extension = capacity_extensions.extension_apply(
                extension=extension,
                reason=f"Invoiced ({invoice.number or invoice.stripe_invoice_id}).",
            )
        except Conflict as exc:  # ExtensionUnavailable included
            why = f"Extension {extension.public_id} not applied: {exc.message}"
            invoices.invoice_credit(
                invoice=invoice,
                amount=invoice.amount,
                reason=why,
                reservation=extension.reservation,
            )
            invoice.refresh_from_db()
            extension.refresh_from_db()
            if extension.state == Extension.State.HELD:  # give the held hours back now
                extension = capacity_extensions.extension_cancel(
                    extension=extension, actor=None, reason=why
                )
    return ExtensionStarted(extension, None, None, invoice)


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
    request started. On invoice terms the hours are invoiced instead (`collect` unused)."""
    if collect not in (SAVED_CARD, PAYMENT_INTENT, PAY_PAGE) or fallback == SAVED_CARD:
        raise ServiceError("Unknown way to pay.", param="collect")
    if not attempt_token or len(attempt_token) > 64:
        raise ServiceError("Send a client token of at most 64 characters.", param="client_token")
    require_may_pay(actor=actor, organization=reservation.organization)
    _require_not_refused(reservation)
    if reservation.organization.on_invoice_terms:
        return _on_invoice(
            reservation=reservation,
            actor=actor,
            hours=hours,
            attempt_token=attempt_token,
            staff=False,
        )
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
    page, and the end moves once it is paid. On invoice terms the hours are invoiced, within
    the credit limit, as the customer's would be."""
    require_staff_permission(actor, OPERATE, "extend reservations")
    reason = reason_clean(reason, required=True)
    _require_not_refused(reservation)  # sold like any hours: complimentary ones are the way round
    if reservation.organization.on_invoice_terms:
        started = _on_invoice(
            reservation=reservation,
            actor=actor,
            hours=hours,
            attempt_token=attempt_token,
            staff=True,
        )
    else:
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
