"""Card payments for reservations, and applying a PaymentIntent's state as Stripe reports it.

Calls to Stripe never happen inside a database transaction that holds locks: we write our own
row first (its id is the idempotency key), call Stripe, then record the answer. A crash between
the two leaves a pending row that the next attempt finishes with the same key, so nothing is
charged or refunded twice.
"""

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.guards import require_active_organization
from accounts.models import User
from capacity import extensions as capacity_extensions
from capacity import services as capacity_services
from capacity.models import Extension, Reservation
from core import audit
from core.errors import Conflict, NotAllowed, ServiceError
from core.money import format_money, from_minor, to_minor

from .. import gateway
from ..models import BillingAccount, FinanceFlag, LedgerEntry, Payment
from .accounts import (
    billing_account_ensure,
    billing_email_queue,
    is_billing_manager,
    require_may_pay,
)
from .flags import flag_raise
from .refunds import refund_issue

logger = logging.getLogger(__name__)
S = Reservation.State


def _forget_card(account: BillingAccount, payment_method_id: str) -> None:
    """Detach a card the customer did not ask to keep (never the default). Best effort: a
    card left attached is only clutter on the billing page."""
    account.refresh_from_db()
    if not payment_method_id or payment_method_id == account.default_payment_method_id:
        return
    try:
        gateway.payment_method_detach(payment_method_id=payment_method_id, idempotency_key=None)
    except gateway.PaymentError as exc:
        logger.warning("could not detach card %s: %s", payment_method_id, exc.message)


def _settle_card(payment: Payment, payment_method_id: str) -> None:
    """After a successful payment: keep the card as the default if asked, else let it go."""
    account = billing_account_ensure(payment.organization)
    if payment.keep_card:
        with transaction.atomic():
            locked = BillingAccount.objects.select_for_update().get(pk=account.pk)
            locked.default_payment_method_id = payment_method_id
            locked.save(update_fields=["default_payment_method_id"])
            audit.record(
                action="payment_method.made_default",
                actor=payment.created_by,
                organization=payment.organization,
                target=locked,
                data={"payment_method": payment_method_id, "payment": payment.public_id},
            )
    else:
        _forget_card(account, payment_method_id)


def _payable(reservation: Reservation, extension: Extension | None = None) -> None:
    if extension is not None:
        _extension_payable(reservation, extension)
        return
    if reservation.state != S.HELD:
        raise Conflict(
            f"This reservation is {reservation.get_state_display().lower()}; "
            "there is nothing to pay.",
            code="not_payable",
        )
    if reservation.hold_expires_at and reservation.hold_expires_at <= timezone.now():
        raise Conflict(
            "The hold on these nodes has lapsed. Search again to reserve a new block.",
            code="hold_expired",
        )
    if reservation.organization.on_invoice_terms:
        raise Conflict("This organization is invoiced; no card payment is needed.", code="invoiced")


def _extension_payable(reservation: Reservation, extension: Extension) -> None:
    if extension.reservation_id != reservation.pk:
        raise NotAllowed("No such extension.", code="not_found")
    extension.refresh_from_db(fields=["state", "hold_expires_at"])  # as it is now
    if extension.state != Extension.State.HELD:
        raise Conflict(
            f"Extension {extension.public_id} is {extension.get_state_display().lower()}; "
            "there is nothing to pay.",
            code="not_payable",
        )
    if extension.hold_expires_at and extension.hold_expires_at <= timezone.now():
        raise Conflict(
            "The hold on the extra hours has lapsed. Ask for the extension again.",
            code="hold_expired",
        )
    if reservation.state not in capacity_extensions.EXTENDABLE:
        raise Conflict(
            f"This reservation is {reservation.get_state_display().lower()}; "
            "it can no longer be extended.",
            code="not_payable",
        )
    if reservation.organization.on_invoice_terms:
        raise Conflict(EXTENSION_ON_INVOICE, code="invoiced")


EXTENSION_ON_INVOICE = "Extensions on invoice terms: ask your account manager."


def _metadata(payment: Payment) -> dict[str, str]:
    metadata = {
        "payment": payment.public_id,
        "reservation": payment.reservation.public_id,
        "organization": payment.organization.slug,
    }
    if payment.extension_id:
        metadata["extension"] = Extension.objects.get(pk=payment.extension_id).public_id
    return metadata


def card_form_check(
    *, reservation: Reservation, actor: User, extension: Extension | None = None
) -> None:
    """Refuse the card form when nothing can be paid (or not by this user). The form makes a
    PaymentMethod with Stripe.js and posts it; the server confirms the payment with it, so the
    customer's bank asks for 3-D Secure once, for the payment itself."""
    require_may_pay(actor=actor, organization=reservation.organization)
    _payable(reservation, extension)


def _customer_card(account: BillingAccount, payment_method_id: str) -> str:
    """The card, if it is this customer's (attaching a new one); refuses another's."""
    if not payment_method_id.startswith("pm_"):
        raise ServiceError(
            "The card form did not finish. Try again.", code="invalid_payment_method"
        )
    method = gateway.payment_method_retrieve(payment_method_id)
    owner = getattr(method, "customer", None)
    owner = owner if isinstance(owner, str) or owner is None else owner.id
    if owner is None:
        gateway.payment_method_attach(
            payment_method_id=payment_method_id,
            customer_id=account.stripe_customer_id,
            idempotency_key=f"attach:{account.pk}:{payment_method_id}",
        )
    elif owner != account.stripe_customer_id:
        raise NotAllowed("That card belongs to someone else.", code="not_found")
    return payment_method_id


def _attempt(
    reservation: Reservation,
    actor: User,
    attempt_token: str,
    *,
    keep_card: bool = False,
    extension: Extension | None = None,
) -> tuple[Payment, bool]:
    """The payment of one attempt (one click, one API call's client token), and whether it is
    new. Copies of an attempt racing each other get the same payment: get_or_create falls back
    to reading the row when its insert meets the unique (reservation, attempt_token). An
    extension's payment is for the extension's price only."""
    payment, created = Payment.objects.get_or_create(
        reservation=reservation,
        attempt_token=attempt_token,
        defaults={
            "organization": reservation.organization,
            "created_by": actor,
            "extension": extension,
            "amount": extension.price if extension else reservation.total,
            "currency": extension.currency if extension else reservation.currency,
            "keep_card": keep_card,
        },
    )
    if payment.extension_id != (extension.pk if extension else None):
        raise ServiceError("Reload the page and try again.", code="invalid_attempt")
    return payment, created


def payment_by_card_create(
    *,
    reservation: Reservation,
    actor: User,
    payment_method_id: str,
    attempt_token: str,
    off_session: bool = False,
    keep_card: bool = False,
    extension: Extension | None = None,
    by_staff: bool = False,
) -> Payment:
    """Charge a card for a held reservation, confirming the PaymentIntent on the server.

    One attempt token makes one PaymentIntent: a double-clicked button pays once. A declined
    card raises PaymentError (the attempt is kept as failed; the customer may try again until
    the hold lapses); a card that needs 3-D Secure leaves the payment `requires_action` for
    the page to confirm with Stripe.js. With `keep_card` (billing managers only) the card
    becomes the organization's default once paid; otherwise it is not kept. With `extension`
    the payment is for that extension's hours; `by_staff` means operations charge it (their
    permission was checked by the caller).
    """
    if not by_staff:
        require_may_pay(actor=actor, organization=reservation.organization)
    keep_card = keep_card and not by_staff and is_billing_manager(actor, reservation.organization)
    require_active_organization(reservation.organization)
    _payable(reservation, extension)
    if not attempt_token or len(attempt_token) > 64:
        raise ServiceError("Reload the page and try again.", code="invalid_attempt")
    account = billing_account_ensure(reservation.organization)
    method = _customer_card(account, payment_method_id)
    payment, created = _attempt(
        reservation, actor, attempt_token, keep_card=keep_card, extension=extension
    )
    if not created and payment.stripe_payment_intent_id:
        return payment_sync(payment_intent_id=payment.stripe_payment_intent_id) or payment
    try:
        intent = gateway.payment_intent_create(
            amount_minor=to_minor(payment.amount, payment.currency),
            currency=payment.currency,
            customer_id=account.stripe_customer_id,
            metadata=_metadata(payment),
            idempotency_key=f"payment:{payment.public_id}",
            payment_method_id=method,
            off_session=off_session,
        )
    except gateway.PaymentError as exc:
        Payment.objects.filter(pk=payment.pk).update(
            status=Payment.Status.FAILED,
            failure_message=exc.message[:300],
            stripe_payment_intent_id=_intent_id_from_error(exc),
        )
        _forget_card(account, method)  # a declined card is not worth keeping
        raise
    Payment.objects.filter(pk=payment.pk).update(stripe_payment_intent_id=intent.id)
    return payment_sync(payment_intent_id=intent.id) or payment


def payment_intent_open(
    *,
    reservation: Reservation,
    actor: User,
    attempt_token: str,
    extension: Extension | None = None,
    by_staff: bool = False,
) -> tuple[Payment, str]:
    """For API clients that confirm the payment themselves (Stripe.js or a Stripe SDK): an
    unconfirmed PaymentIntent and its client secret. One attempt token is one PaymentIntent."""
    if not by_staff:
        require_may_pay(actor=actor, organization=reservation.organization)
    require_active_organization(reservation.organization)
    _payable(reservation, extension)
    if not attempt_token or len(attempt_token) > 64:
        raise ServiceError("Send an attempt token of at most 64 characters.", param="client_token")
    account = billing_account_ensure(reservation.organization)
    payment, _ = _attempt(reservation, actor, attempt_token, extension=extension)
    intent = gateway.payment_intent_create(
        amount_minor=to_minor(payment.amount, payment.currency),
        currency=payment.currency,
        customer_id=account.stripe_customer_id,
        metadata=_metadata(payment),
        idempotency_key=f"payment:{payment.public_id}",
    )
    Payment.objects.filter(pk=payment.pk).update(stripe_payment_intent_id=intent.id)
    payment.stripe_payment_intent_id = intent.id
    return payment, intent.client_secret


def payment_by_saved_card_create(
    *,
    reservation: Reservation,
    actor: User,
    attempt_token: str,
    extension: Extension | None = None,
    by_staff: bool = False,
) -> Payment:
    """Charge the organization's default card off-session."""
    account = billing_account_ensure(reservation.organization)
    if not account.default_payment_method_id:
        raise ServiceError("There is no saved card. Pay with a card below.", code="no_saved_card")
    return payment_by_card_create(
        reservation=reservation,
        actor=actor,
        payment_method_id=account.default_payment_method_id,
        attempt_token=attempt_token,
        off_session=True,
        extension=extension,
        by_staff=by_staff,
    )


def client_secret_for_payment(payment: Payment) -> str:
    """For a payment that needs 3-D Secure: the secret Stripe.js confirms it with."""
    if not payment.stripe_payment_intent_id:
        raise Conflict("This payment never reached Stripe.", code="no_payment_intent")
    secret: str = gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).client_secret
    return secret


def _intent_id_from_error(exc: gateway.PaymentError) -> str | None:
    cause = exc.__cause__
    intent = getattr(getattr(cause, "error", None), "payment_intent", None)
    intent_id = getattr(intent, "id", None) or (
        intent.get("id") if isinstance(intent, dict) else None
    )
    return intent_id


STATUS_FROM_STRIPE = {
    "succeeded": Payment.Status.SUCCEEDED,
    "processing": Payment.Status.PROCESSING,
    "requires_action": Payment.Status.REQUIRES_ACTION,
    "requires_confirmation": Payment.Status.PENDING,
    "requires_payment_method": Payment.Status.PENDING,
    "requires_capture": Payment.Status.PROCESSING,
    "canceled": Payment.Status.CANCELED,
}


def payment_sync(*, payment_intent_id: str) -> Payment | None:
    """Apply a PaymentIntent's state as Stripe reports it now. Idempotent: any number of calls,
    in any order with other events, books a success once."""
    intent = gateway.payment_intent_retrieve(payment_intent_id)
    card = _card_details(intent) if intent.status == "succeeded" else ("", "")
    follow_up = None
    with transaction.atomic():
        payment = _payment_for_intent(intent)
        if payment is None:
            if intent.status != "succeeded":
                return None  # no money moved: nothing to reconcile
            if gateway.payment_intent_paid_an_invoice(intent):
                return None  # an invoice paid by card: the invoice's sync books it
            flag_raise(
                FinanceFlag.Kind.UNKNOWN_PAYMENT,
                payment_intent_id,
                f"Stripe reports PaymentIntent {payment_intent_id} ({intent.status}) that no "
                f"payment of ours points to. Metadata: {gateway.as_dict(intent.metadata)}.",
            )
            return None
        status = STATUS_FROM_STRIPE.get(intent.status, Payment.Status.PENDING)
        error = getattr(intent, "last_payment_error", None)
        if status == Payment.Status.PENDING and error:
            status = Payment.Status.FAILED
        if payment.status in Payment.RECEIVED or payment.status == status:
            return payment  # nothing new
        if status != Payment.Status.SUCCEEDED:
            previous = payment.status
            payment.status = status
            payment.failure_message = (getattr(error, "message", "") or "")[:300] if error else ""
            payment.save(update_fields=["status", "failure_message", "updated_at"])
            audit.record(
                action=f"payment.{status}",
                actor=None,
                organization=payment.organization,
                target=payment,
                data={"from": previous, "to": status, "stripe_status": intent.status},
                reason=payment.failure_message,
            )
            settled = status in (Payment.Status.FAILED, Payment.Status.CANCELED)
        else:
            follow_up = _book_success(payment, intent, card)
            settled = True
    method = getattr(intent, "payment_method", None)
    if settled and method:  # the card is no longer needed for this payment
        method_id = method if isinstance(method, str) else method.id
        if payment.status == Payment.Status.SUCCEEDED:
            _settle_card(payment, method_id)
        else:
            _forget_card(billing_account_ensure(payment.organization), method_id)
    if follow_up is not None:
        follow_up()
    return payment


def _payment_for_intent(intent: Any) -> Payment | None:
    """Our payment behind a PaymentIntent, locked: by its id, else by the id in its metadata
    (a request that timed out before we stored the intent's id)."""
    # Only the payment's row: locking the reservation and organization rows too (a bare FOR
    # UPDATE with the joins) deadlocked against a reservation being made for the organization,
    # whose commit checks its foreign key to that organization row.
    payments = Payment.objects.select_for_update(of=("self",)).select_related(
        "reservation", "organization", "extension"
    )
    payment = payments.filter(stripe_payment_intent_id=intent.id).first()
    if payment is None:
        public_id = gateway.as_dict(getattr(intent, "metadata", None)).get("payment")
        payment = payments.filter(
            public_id=public_id, stripe_payment_intent_id__isnull=True
        ).first()
        if payment is not None:
            payment.stripe_payment_intent_id = intent.id
            payment.save(update_fields=["stripe_payment_intent_id", "updated_at"])
    return payment


def _card_details(intent: Any) -> tuple[str, str]:
    method_id = getattr(intent, "payment_method", None)
    if not method_id:
        return "", ""
    method = gateway.payment_method_retrieve(
        method_id if isinstance(method_id, str) else method_id.id
    )
    details = getattr(method, "card", None)
    return (getattr(details, "brand", "") or "", getattr(details, "last4", "") or "")


def _book_success(
    payment: Payment, intent: Any, card: tuple[str, str]
) -> Callable[[], None] | None:
    """Record a successful payment and confirm its reservation. Runs inside the payment lock;
    returns work for after the commit (a refund when the reservation cannot take the money)."""
    received = from_minor(amount_received(intent), intent.currency)
    payment.status = Payment.Status.SUCCEEDED
    payment.succeeded_at = timezone.now()
    payment.card_brand, payment.card_last4 = card
    reservation = payment.reservation
    organization = payment.organization
    mismatch = intent.currency != payment.currency or received != payment.amount
    extension = payment.extension
    price = extension.price if extension is not None else reservation.total
    what = f"extension {extension.public_id}" if extension is not None else "the reservation"
    mismatch = mismatch or payment.amount != price
    if mismatch:
        payment.flagged = True
        payment.flag_reason = (
            f"Stripe took {format_money(received, intent.currency)}, {what} costs "
            f"{format_money(price, payment.currency)}."
        )
    try:
        with transaction.atomic():
            payment.save()
    except IntegrityError:
        # Another payment for this reservation already succeeded: this one must go back.
        Payment.objects.filter(pk=payment.pk).update(
            status=Payment.Status.DUPLICATE,
            succeeded_at=payment.succeeded_at,
            card_brand=card[0],
            card_last4=card[1],
            flagged=True,
            flag_reason=(
                f"A second payment for the already paid extension {extension.public_id}."
                if extension is not None
                else "A second payment for an already paid reservation."
            ),
        )
        payment.refresh_from_db()
        _ledger_payment(payment, received)
        return lambda: _refund_in_full(payment, f"{what.capitalize()} was already paid.")
    _ledger_payment(payment, received)
    audit.record(
        action="payment.succeeded",
        actor=None,
        organization=organization,
        target=payment,
        data={
            "amount": str(received),
            "currency": intent.currency,
            "reservation": reservation.public_id,
            "extension": extension.public_id if extension is not None else None,
        },
    )
    if mismatch:
        flag_raise(
            FinanceFlag.Kind.AMOUNT_MISMATCH, intent.id, payment.flag_reason, payment=payment
        )
        return None
    if extension is not None:  # charged once applied: a payment hours cannot take is no sale
        return _apply_extension(payment, extension, intent.id)
    _ledger_charge(payment, f"Reservation {reservation.public_id}")
    # A late payment (the hold lapsed) buys the block only if it is still free, was no quote and
    # costs no more now; whatever it paid beyond today's price goes back, like an extension's.
    try:
        confirmed, overpaid = capacity_services.reservation_confirm_paid(
            reservation=reservation,
            actor=None,
            reason=f"Paid by card ({payment.public_id}).",
            paid=payment.amount,
        )
    except capacity_services.SoldOut:
        reason = "The hold lapsed before the payment arrived and the nodes were taken meanwhile."
        flag_raise(FinanceFlag.Kind.LATE_PAYMENT_REFUNDED, intent.id, reason, payment=payment)
        return lambda: _refund_in_full(payment, reason, tell_customer=True)
    except capacity_services.LatePaymentRefused as exc:
        why = exc.message
        flag_raise(FinanceFlag.Kind.LATE_PAYMENT_REFUNDED, intent.id, why, payment=payment)
        return lambda: _refund_in_full(payment, why, tell_customer=True)
    except Conflict as exc:  # canceled meanwhile
        why = f"Not fulfilled: {exc.message}"
        return lambda: _refund_in_full(payment, why, tell_customer=True)
    billing_email_queue(organization, "payment_receipt", payment=payment, reservation=confirmed)
    if overpaid > 0:
        why = (
            f"The hold lapsed before the payment arrived; the block costs "
            f"{format_money(payment.amount - overpaid, payment.currency)} now, so the difference "
            "goes back."
        )
        return lambda: _refund_part(payment, overpaid, why)
    return None


def _apply_extension(
    payment: Payment, extension: Extension, intent_id: str
) -> Callable[[], None] | None:
    """The extension's money is in: move the reservation's end and charge its price, else
    refund it in full. A late payment (the hold lapsed) is re-priced by capacity: refused when
    the hours cost more now, what it paid beyond today's price goes back."""
    try:
        applied, overpaid = capacity_extensions.extension_confirm_paid(
            extension=extension, reason=f"Paid by card ({payment.public_id}).", paid=payment.amount
        )
    except (
        capacity_extensions.ExtensionUnavailable,
        capacity_extensions.LateExtensionRefused,
    ) as exc:
        flag_raise(FinanceFlag.Kind.LATE_PAYMENT_REFUNDED, intent_id, exc.message, payment=payment)
        return _not_applied(payment, extension, exc.message)
    except Conflict as exc:  # the reservation was canceled or ended meanwhile
        return _not_applied(payment, extension, f"Not fulfilled: {exc.message}")
    _ledger_charge(
        payment,
        f"Extension {applied.public_id} of {payment.reservation.public_id} ({applied.hours} h)",
    )
    billing_email_queue(
        payment.organization, "payment_receipt", payment=payment, reservation=payment.reservation
    )
    if overpaid > 0:
        now = format_money(payment.amount - overpaid, payment.currency)
        why = f"The extension's hold lapsed before the payment arrived; its hours cost {now} now."
        return lambda: _refund_part(payment, overpaid, why)
    return None


def _not_applied(payment: Payment, extension: Extension, reason: str) -> Callable[[], None]:
    """Hours not applied: the payment is booked like a second one (received, never charged, so
    no cancellation or failure refund counts it) and refunded in full after the commit."""
    payment.status, payment.flag_reason = Payment.Status.DUPLICATE, reason[:300]
    payment.save(update_fields=["status", "flag_reason", "updated_at"])
    audit.record(
        action="payment.not_applied", actor=None, organization=payment.organization,
        target=payment, data={"extension": extension.public_id}, reason=reason,
    )  # fmt: skip
    return lambda: _refund_in_full(payment, reason, tell_customer=True)


def _ledger_charge(payment: Payment, description: str) -> None:
    _ledger(payment, LedgerEntry.Kind.CHARGE, payment.amount, description)


def amount_received(intent: Any) -> int:
    return getattr(intent, "amount_received", None) or intent.amount


def _ledger_payment(payment: Payment, received: Decimal) -> None:
    card = f" ({payment.card_brand} •••• {payment.card_last4})" if payment.card_last4 else ""
    _ledger(payment, LedgerEntry.Kind.PAYMENT, -received, f"Card payment {payment.public_id}{card}")


def _ledger(payment: Payment, kind: str, amount: Decimal, description: str) -> None:
    LedgerEntry.objects.create(
        organization=payment.organization, kind=kind, amount=amount, currency=payment.currency,
        reservation=payment.reservation, payment=payment, description=description,
    )  # fmt: skip


def _refund_in_full(payment: Payment, reason: str, *, tell_customer: bool = False) -> None:
    payment.refresh_from_db()
    _refund_part(payment, payment.refundable, reason, tell_customer=tell_customer)


def _refund_part(
    payment: Payment, amount: Decimal, reason: str, *, tell_customer: bool = True
) -> None:
    if amount <= 0:
        return
    refund = refund_issue(payment=payment, amount=amount, reason=reason, actor=None)
    if tell_customer:
        billing_email_queue(
            payment.organization, "payment_refunded", payment=payment, refund=refund
        )
