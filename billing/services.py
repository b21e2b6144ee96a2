"""Money: payments, refunds, invoices, the ledger, and applying what Stripe tells us.

Calls to Stripe never happen inside a database transaction that holds locks: we write our own
row first (its id is the idempotency key), call Stripe, then record the answer. A crash between
the two leaves a pending row that the next attempt finishes with the same key, so nothing is
charged or refunded twice.
"""

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.guards import require_active_organization
from accounts.models import Organization, User
from accounts.permissions import Permission, can
from accounts.selectors import membership_for
from capacity import services as capacity_services
from capacity.models import Reservation
from core import audit
from core.emails import queue_email
from core.errors import Conflict, NotAllowed, ServiceError
from core.money import format_money, from_minor, to_minor
from core.tasks import enqueue_after_commit

from . import gateway
from .models import (
    BillingAccount,
    FinanceFlag,
    Invoice,
    LedgerEntry,
    Payment,
    Refund,
)

logger = logging.getLogger(__name__)
S = Reservation.State


# --- Who may pay ------------------------------------------------------------------------------
def require_may_pay(*, actor: User, organization: Organization) -> None:
    membership = membership_for(user=actor, slug=organization.slug)
    if membership is None:
        raise NotAllowed("Organization not found.", code="not_found")
    if not (
        can(membership.role, Permission.MANAGE_BILLING)
        or can(membership.role, Permission.MANAGE_RESERVATIONS)
    ):
        raise NotAllowed(f"Your role ({membership.get_role_display().lower()}) cannot pay.")


def _is_billing_manager(actor: User, organization: Organization) -> bool:
    membership = membership_for(user=actor, slug=organization.slug)
    return membership is not None and can(membership.role, Permission.MANAGE_BILLING)


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
    account = billing_account_for(payment.organization)
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


def require_billing_manager(*, actor: User, organization: Organization) -> None:
    membership = membership_for(user=actor, slug=organization.slug)
    if membership is None or not can(membership.role, Permission.MANAGE_BILLING):
        raise NotAllowed("Only owners, admins and billing members manage payment methods.")


# --- Stripe customer ---------------------------------------------------------------------------
def billing_account_for(organization: Organization) -> BillingAccount:
    """The organization's Stripe customer, created on first need (once, even when racing)."""
    existing = BillingAccount.objects.filter(organization=organization).first()
    if existing is not None:
        return existing
    customer = gateway.customer_create(
        name=organization.legal_name or organization.name,
        email=organization.billing_email,
        metadata={"organization": organization.slug, "organization_id": str(organization.pk)},
        idempotency_key=f"customer:{organization.pk}",
    )
    try:
        with transaction.atomic():
            return BillingAccount.objects.create(
                organization=organization, stripe_customer_id=customer.id
            )
    except IntegrityError:  # a concurrent request stored it first (same key, same customer)
        return BillingAccount.objects.get(organization=organization)


# --- Paying for a reservation ------------------------------------------------------------------
def _payable(reservation: Reservation) -> None:
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


def _metadata(payment: Payment) -> dict[str, str]:
    return {
        "payment": payment.public_id,
        "reservation": payment.reservation.public_id,
        "organization": payment.organization.slug,
    }


def card_form_start(*, reservation: Reservation, actor: User) -> str:
    """A SetupIntent the card form confirms to collect (and 3-D Secure) a card; returns its
    client secret. The payment itself is then made on the server with that card."""
    require_may_pay(actor=actor, organization=reservation.organization)
    _payable(reservation)
    account = billing_account_for(reservation.organization)
    intent = gateway.setup_intent_create(
        customer_id=account.stripe_customer_id,
        metadata={
            "organization": reservation.organization.slug,
            "reservation": reservation.public_id,
        },
        idempotency_key=None,  # a fresh form each time; nothing is charged by it
    )
    return intent.client_secret


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
    reservation: Reservation, actor: User, attempt_token: str, *, keep_card: bool = False
) -> tuple[Payment, bool]:
    """The payment of one attempt (one click, one API call's client token), and whether it is
    new. Copies of an attempt racing each other get the same payment: get_or_create falls back
    to reading the row when its insert meets the unique (reservation, attempt_token)."""
    return Payment.objects.get_or_create(
        reservation=reservation,
        attempt_token=attempt_token,
        defaults={
            "organization": reservation.organization,
            "created_by": actor,
            "amount": reservation.total,
            "currency": reservation.currency,
            "keep_card": keep_card,
        },
    )


def pay_by_card(
    *,
    reservation: Reservation,
    actor: User,
    payment_method_id: str,
    attempt_token: str,
    off_session: bool = False,
    keep_card: bool = False,
) -> Payment:
    """Charge a card for a held reservation, confirming the PaymentIntent on the server.

    One attempt token makes one PaymentIntent: a double-clicked button pays once. A declined
    card raises PaymentError (the attempt is kept as failed; the customer may try again until
    the hold lapses); a card that needs 3-D Secure leaves the payment `requires_action` for
    the page to confirm with Stripe.js. With `keep_card` (billing managers only) the card
    becomes the organization's default once paid; otherwise it is not kept.
    """
    require_may_pay(actor=actor, organization=reservation.organization)
    keep_card = keep_card and _is_billing_manager(actor, reservation.organization)
    require_active_organization(reservation.organization)
    _payable(reservation)
    if not attempt_token or len(attempt_token) > 64:
        raise ServiceError("Reload the page and try again.", code="invalid_attempt")
    account = billing_account_for(reservation.organization)
    method = _customer_card(account, payment_method_id)
    payment, created = _attempt(reservation, actor, attempt_token, keep_card=keep_card)
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
    *, reservation: Reservation, actor: User, attempt_token: str
) -> tuple[Payment, str]:
    """For API clients that confirm the payment themselves (Stripe.js or a Stripe SDK): an
    unconfirmed PaymentIntent and its client secret. One attempt token is one PaymentIntent."""
    require_may_pay(actor=actor, organization=reservation.organization)
    require_active_organization(reservation.organization)
    _payable(reservation)
    if not attempt_token or len(attempt_token) > 64:
        raise ServiceError("Send an attempt token of at most 64 characters.", param="client_token")
    account = billing_account_for(reservation.organization)
    payment, _ = _attempt(reservation, actor, attempt_token)
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


def pay_with_saved_card(*, reservation: Reservation, actor: User, attempt_token: str) -> Payment:
    """Charge the organization's default card off-session."""
    account = billing_account_for(reservation.organization)
    if not account.default_payment_method_id:
        raise ServiceError("There is no saved card. Pay with a card below.", code="no_saved_card")
    return pay_by_card(
        reservation=reservation,
        actor=actor,
        payment_method_id=account.default_payment_method_id,
        attempt_token=attempt_token,
        off_session=True,
    )


def client_secret(payment: Payment) -> str:
    """For a payment that needs 3-D Secure: the secret Stripe.js confirms it with."""
    return gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).client_secret


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
            flag_raise(
                FinanceFlag.Kind.UNKNOWN_PAYMENT,
                payment_intent_id,
                f"Stripe reports PaymentIntent {payment_intent_id} ({intent.status}) that no "
                f"payment of ours points to. Metadata: {_plain(intent.metadata)}.",
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
            _forget_card(billing_account_for(payment.organization), method_id)
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
        "reservation", "organization"
    )
    payment = payments.filter(stripe_payment_intent_id=intent.id).first()
    if payment is None:
        public_id = _plain(getattr(intent, "metadata", None)).get("payment")
        payment = payments.filter(
            public_id=public_id, stripe_payment_intent_id__isnull=True
        ).first()
        if payment is not None:
            payment.stripe_payment_intent_id = intent.id
            payment.save(update_fields=["stripe_payment_intent_id", "updated_at"])
    return payment


def _plain(value: Any) -> dict:
    return value.to_dict() if hasattr(value, "to_dict") else dict(value or {})


def _card_details(intent: Any) -> tuple[str, str]:
    method_id = getattr(intent, "payment_method", None)
    if not method_id:
        return "", ""
    method = gateway.payment_method_retrieve(
        method_id if isinstance(method_id, str) else method_id.id
    )
    details = getattr(method, "card", None)
    return (getattr(details, "brand", "") or "", getattr(details, "last4", "") or "")


def _book_success(payment: Payment, intent: Any, card: tuple[str, str]):  # type: ignore[no-untyped-def]
    """Record a successful payment and confirm its reservation. Runs inside the payment lock;
    returns work for after the commit (a refund when the reservation cannot take the money)."""
    received = from_minor(amount_received(intent), intent.currency)
    payment.status = Payment.Status.SUCCEEDED
    payment.succeeded_at = timezone.now()
    payment.card_brand, payment.card_last4 = card
    reservation = payment.reservation
    organization = payment.organization
    mismatch = intent.currency != payment.currency or received != payment.amount
    mismatch = mismatch or payment.amount != reservation.total
    if mismatch:
        payment.flagged = True
        payment.flag_reason = (
            f"Stripe took {format_money(received, intent.currency)}, the reservation costs "
            f"{format_money(reservation.total, reservation.currency)}."
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
            flag_reason="A second payment for an already paid reservation.",
        )
        payment.refresh_from_db()
        _ledger_payment(payment, received)
        return lambda: _refund_in_full(payment, "The reservation was already paid.")
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
        },
    )
    if mismatch:
        flag_raise(
            FinanceFlag.Kind.AMOUNT_MISMATCH, intent.id, payment.flag_reason, payment=payment
        )
        return None
    LedgerEntry.objects.create(
        organization=organization,
        kind=LedgerEntry.Kind.CHARGE,
        amount=payment.amount,
        currency=payment.currency,
        reservation=reservation,
        payment=payment,
        description=f"Reservation {reservation.public_id}",
    )
    try:
        capacity_services.reservation_confirm(
            reservation=reservation, actor=None, reason=f"Paid by card ({payment.public_id})."
        )
    except capacity_services.SoldOut:
        reason = "The hold lapsed before the payment arrived and the nodes were taken meanwhile."
        flag_raise(FinanceFlag.Kind.LATE_PAYMENT_REFUNDED, intent.id, reason, payment=payment)
        return lambda: _refund_in_full(payment, reason, tell_customer=True)
    except Conflict as exc:  # canceled meanwhile
        why = f"Not fulfilled: {exc.message}"
        return lambda: _refund_in_full(payment, why, tell_customer=True)
    _mail_billing(organization, "payment_receipt", payment=payment, reservation=reservation)
    return None


def amount_received(intent: Any) -> int:
    return getattr(intent, "amount_received", None) or intent.amount


def _ledger_payment(payment: Payment, received: Decimal) -> None:
    LedgerEntry.objects.create(
        organization=payment.organization,
        kind=LedgerEntry.Kind.PAYMENT,
        amount=-received,
        currency=payment.currency,
        reservation=payment.reservation,
        payment=payment,
        description=f"Card payment {payment.public_id}"
        + (f" ({payment.card_brand} •••• {payment.card_last4})" if payment.card_last4 else ""),
    )


def _refund_in_full(payment: Payment, reason: str, *, tell_customer: bool = False) -> None:
    payment.refresh_from_db()
    if payment.refundable <= 0:
        return
    refund = refund_issue(payment=payment, amount=payment.refundable, reason=reason, actor=None)
    if tell_customer:
        _mail_billing(payment.organization, "payment_refunded", payment=payment, refund=refund)


# --- Refunds ------------------------------------------------------------------------------------
def refund_issue(
    *, payment: Payment, amount: Decimal, reason: str, actor: User | None, settles: str = ""
) -> Refund:
    """Refund `amount` of a successful payment. The row is written first; its id is the
    idempotency key, so retrying a refund that timed out cannot pay out twice."""
    return refund_send(
        refund_open(payment=payment, amount=amount, reason=reason, actor=actor, settles=settles)
    )


class AlreadySettled(Conflict):
    default_code = "already_settled"


def refund_open(
    *, payment: Payment, amount: Decimal, reason: str, actor: User | None, settles: str = ""
) -> Refund:
    """Write a pending refund after checking that it fits in what is left of the payment (under
    the payment's lock). Nothing is sent: `refund_send` does that, outside any transaction.
    A refund that `settles` a cancellation or a failure is made once per payment
    (AlreadySettled otherwise; a unique constraint holds it)."""
    if amount <= 0:
        raise ServiceError("Refund a positive amount.", param="amount")
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.status not in Payment.RECEIVED:
            raise Conflict("Only a successful payment can be refunded.", code="not_refundable")
        pending = sum(
            locked.refunds.filter(status=Refund.Status.PENDING).values_list("amount", flat=True),
            Decimal("0.00"),
        )
        if amount > locked.refundable - pending:
            raise ServiceError(
                f"At most {format_money(locked.refundable - pending, locked.currency)} "
                "can still be "
                "refunded on this payment.",
                code="refund_too_large",
                param="amount",
            )
        if settles and locked.refunds.filter(settles=settles).exists():
            raise AlreadySettled("This payment has already been refunded for that.")
        refund = Refund.objects.create(
            payment=locked,
            amount=amount,
            currency=locked.currency,
            reason=reason[:300],
            created_by=actor,
            settles=settles,
        )
    return refund


def refund_send(refund: Refund) -> Refund:
    payment = refund.payment
    stripe_refund = gateway.refund_create(
        payment_intent_id=payment.stripe_payment_intent_id,
        amount_minor=to_minor(refund.amount, refund.currency),
        metadata={"refund": refund.public_id, "payment": payment.public_id},
        idempotency_key=f"refund:{refund.public_id}",
    )
    return _book_refund(refund.pk, stripe_refund.id, stripe_refund.status)


def _book_refund(refund_pk: int, stripe_refund_id: str, stripe_status: str) -> Refund:
    with transaction.atomic():
        refund = Refund.objects.select_for_update().select_related("payment").get(pk=refund_pk)
        if refund.status == Refund.Status.SUCCEEDED:
            return refund
        refund.stripe_refund_id = stripe_refund_id
        if stripe_status in ("failed", "canceled"):
            refund.status = Refund.Status.FAILED
            refund.save(update_fields=["stripe_refund_id", "status"])
            return refund
        refund.status = Refund.Status.SUCCEEDED
        refund.save(update_fields=["stripe_refund_id", "status"])
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
        payment.amount_refunded += refund.amount
        payment.save(update_fields=["amount_refunded", "updated_at"])
        _ledger_refund(refund, payment)
    return refund


def _ledger_refund(refund: Refund, payment: Payment) -> None:
    common = {
        "organization_id": payment.organization_id,
        "currency": refund.currency,
        "reservation_id": payment.reservation_id,
        "payment": payment,
        "refund": refund,
    }
    # The credit takes back what the payment was charged for; a payment that was never charged
    # for anything (paid twice, or an amount that did not match) gets its money back alone.
    if LedgerEntry.objects.filter(payment=payment, kind=LedgerEntry.Kind.CHARGE).exists():
        LedgerEntry.objects.create(
            kind=LedgerEntry.Kind.CREDIT,
            amount=-refund.amount,
            description=f"Credit for {payment.reservation.public_id}: {refund.reason}"[:300],
            **common,
        )
    LedgerEntry.objects.create(
        kind=LedgerEntry.Kind.REFUND,
        amount=refund.amount,
        description=f"Refund {refund.public_id} to the card of {payment.public_id}",
        **common,
    )
    audit.record(
        action="refund.succeeded",
        actor=refund.created_by,
        organization=payment.organization,
        target=refund,
        data={"amount": str(refund.amount), "payment": payment.public_id},
        reason=refund.reason,
    )


def refunds_sync(*, payment_intent_id: str) -> None:
    """Book refunds Stripe reports that we did not start (made in Stripe's dashboard)."""
    payment = Payment.objects.filter(stripe_payment_intent_id=payment_intent_id).first()
    if payment is None:
        return
    for stripe_refund in gateway.refunds_list(payment_intent_id=payment_intent_id):
        ours = Refund.objects.filter(stripe_refund_id=stripe_refund.id).first()
        if ours is None:
            ours_id = _plain(getattr(stripe_refund, "metadata", None)).get("refund")
            ours = Refund.objects.filter(public_id=ours_id).first() if ours_id else None
        if ours is None:
            with transaction.atomic():
                Payment.objects.select_for_update().get(pk=payment.pk)
                if Refund.objects.filter(stripe_refund_id=stripe_refund.id).exists():
                    continue
                ours = Refund.objects.create(
                    payment=payment,
                    amount=from_minor(stripe_refund.amount, stripe_refund.currency),
                    currency=stripe_refund.currency,
                    reason="Refunded in Stripe.",
                    stripe_refund_id=stripe_refund.id,
                )
        if ours.status == Refund.Status.PENDING:
            _book_refund(ours.pk, stripe_refund.id, stripe_refund.status)


# --- Settling a reservation: refunds due and invoices -------------------------------------------
def settlement_enqueue(reservation_id: int) -> None:
    """RESERVATION_SETTLEMENT_HOOK: capacity's lifecycle calls this in the transaction that
    moved the reservation; settling runs in a task once that commits."""
    enqueue_after_commit("billing.settle_reservation", reservation_id=reservation_id)


def settle_reservation(*, reservation_id: int) -> None:
    """Do what money a reservation's state asks for. Safe to run any number of times."""
    reservation = Reservation.objects.select_related("organization").get(pk=reservation_id)
    if reservation.state == S.CANCELED and reservation.refund_due:
        _settle_refund(
            reservation,
            reservation.refund_due,
            "Cancellation refund per the policy.",
            Refund.Settles.CANCELLATION,
        )
    elif reservation.state == S.FAILED:
        _settle_refund(
            reservation, None, "Provisioning failed: full refund.", Refund.Settles.FAILURE
        )
    elif (
        reservation.state in (S.SCHEDULED, S.PROVISIONING, S.ACTIVE)
        and reservation.organization.on_invoice_terms
        # Paid by card while the organization was still on card terms: nothing to invoice.
        and not reservation.payments.filter(status=Payment.Status.SUCCEEDED).exists()
    ):
        try:
            invoice_for_reservation(reservation=reservation)
        except gateway.GatewayUnavailable:
            raise  # transient: the task retries
        except gateway.PaymentError as exc:
            Invoice.objects.filter(reservation=reservation).update(last_error=exc.message[:300])
            logger.error("invoice for %s failed: %s", reservation.public_id, exc.message)
    # Refunds that were written but never reached Stripe (a crash in between).
    for refund in Refund.objects.filter(
        payment__reservation=reservation, status=Refund.Status.PENDING
    ):
        refund_send(refund)


def _settle_refund(
    reservation: Reservation, amount: Decimal | None, reason: str, settles: str
) -> None:
    """Give back what a canceled or failed reservation is due (`amount`, or everything): to the
    card it was paid with, or as a credit on its invoice. Once, however often it runs; refunds
    finance made before (goodwill, a partial refund) only lower what is left to give back."""
    if Invoice.objects.filter(reservation=reservation).exists():
        _credit_invoice(reservation, amount, reason)
        return
    payment = reservation.payments.filter(status=Payment.Status.SUCCEEDED, flagged=False).first()
    if payment is None or payment.refunds.filter(settles=settles).exists():
        return
    pending = sum(
        payment.refunds.filter(status=Refund.Status.PENDING).values_list("amount", flat=True),
        Decimal("0.00"),
    )
    left = payment.refundable - pending
    amount = left if amount is None else min(amount, left)
    if amount <= 0:
        return
    try:
        refund = refund_issue(
            payment=payment, amount=amount, reason=reason, actor=None, settles=settles
        )
    except AlreadySettled:  # a concurrent settlement made it first
        return
    _mail_billing(reservation.organization, "payment_refunded", payment=payment, refund=refund)


def _credit_invoice(reservation: Reservation, amount: Decimal | None, reason: str) -> None:
    """Credit the invoice of a canceled or failed reservation on invoice terms: void it when
    nothing is owed any more and it is still open, else a Stripe credit note for the amount
    (on a paid invoice, to the customer's balance). The ledger books the credit once."""
    invoice = Invoice.objects.get(reservation=reservation)
    if not invoice.stripe_invoice_id:
        return  # never sent, nothing booked: invoice_for_reservation no longer sends it
    if LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT, invoice=invoice).exists():
        return
    credit = invoice.amount if amount is None else min(amount, invoice.amount)
    if credit <= 0:
        return
    stripe_invoice = gateway.invoice_retrieve(invoice.stripe_invoice_id)
    key = f"credit:{reservation.public_id}"
    voided = stripe_invoice.status == "open" and credit == invoice.amount
    try:
        if voided:
            gateway.invoice_void(invoice_id=invoice.stripe_invoice_id, idempotency_key=key)
        elif stripe_invoice.status in ("open", "paid"):
            gateway.credit_note_create(
                invoice_id=invoice.stripe_invoice_id,
                amount_minor=to_minor(credit, invoice.currency),
                memo=reason,
                paid=stripe_invoice.status == "paid",
                idempotency_key=key,
            )
    except gateway.GatewayUnavailable:
        raise  # transient: the task retries
    except gateway.PaymentError as exc:
        flag_raise(
            FinanceFlag.Kind.RECONCILIATION,
            f"credit:{invoice.stripe_invoice_id}",
            f"Could not credit {format_money(credit, invoice.currency)} on invoice "
            f"{invoice.number or invoice.stripe_invoice_id} for {reservation.public_id} "
            f"({reason}): {exc.message}",
            organization=invoice.organization,
        )
        return
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT, invoice=locked).exists():
            return
        if voided:
            locked.status = Invoice.Status.VOID
            locked.save(update_fields=["status"])
        LedgerEntry.objects.create(
            organization=locked.organization,
            kind=LedgerEntry.Kind.CREDIT,
            amount=-credit,
            currency=locked.currency,
            reservation=reservation,
            invoice=locked,
            description=f"Credit on invoice {locked.number or locked.stripe_invoice_id}: {reason}"[
                :300
            ],
        )
        audit.record(
            action="invoice.credited",
            actor=None,
            organization=locked.organization,
            target=locked,
            data={"amount": str(credit), "voided": voided, "reservation": reservation.public_id},
            reason=reason,
        )
    _mail_billing(
        reservation.organization, "invoice_credited", invoice=locked, credit=credit,
        reservation=reservation, voided=voided,
    )  # fmt: skip


def invoice_for_reservation(*, reservation: Reservation) -> Invoice:
    """A net-N Stripe invoice for a reservation confirmed on invoice terms (one per reservation)."""
    organization = reservation.organization
    invoice, _ = Invoice.objects.get_or_create(
        reservation=reservation,
        defaults={
            "organization": organization,
            "amount": reservation.total,
            "currency": reservation.currency,
        },
    )
    if invoice.stripe_invoice_id:
        return invoice
    account = billing_account_for(organization)
    stripe_invoice = gateway.invoice_create(
        customer_id=account.stripe_customer_id,
        amount_minor=to_minor(invoice.amount, invoice.currency),
        currency=invoice.currency,
        description=f"Hyperblock reservation {reservation.public_id}: {reservation.node_count} × "
        f"{reservation.gpu_model.name}, {reservation.starts_at:%Y-%m-%d %H:%M} UTC, "
        f"{reservation.duration_hours} h",
        days_until_due=organization.payment_days,
        metadata={"reservation": reservation.public_id, "organization": organization.slug},
        idempotency_key=f"invoice:{reservation.public_id}",
    )
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.stripe_invoice_id:
            return invoice
        invoice.stripe_invoice_id = stripe_invoice.id
        invoice.number = stripe_invoice.number or ""
        invoice.status = (
            stripe_invoice.status if stripe_invoice.status in Invoice.Status.values else "open"
        )
        invoice.hosted_invoice_url = stripe_invoice.hosted_invoice_url or ""
        if stripe_invoice.due_date:
            invoice.due_at = datetime.fromtimestamp(stripe_invoice.due_date, tz=UTC)
        invoice.save()
        LedgerEntry.objects.create(
            organization=organization,
            kind=LedgerEntry.Kind.CHARGE,
            amount=invoice.amount,
            currency=invoice.currency,
            reservation=reservation,
            invoice=invoice,
            description=(
                f"Invoice {invoice.number or invoice.stripe_invoice_id} for {reservation.public_id}"
            ),
        )
        audit.record(
            action="invoice.created",
            actor=None,
            organization=organization,
            target=invoice,
            data={
                "amount": str(invoice.amount),
                "due": invoice.due_at.isoformat() if invoice.due_at else None,
            },
        )
    return invoice


def invoice_sync(*, stripe_invoice_id: str) -> Invoice | None:
    stripe_invoice = gateway.invoice_retrieve(stripe_invoice_id)
    with transaction.atomic():
        invoice = (
            Invoice.objects.select_for_update().filter(stripe_invoice_id=stripe_invoice_id).first()
        )
        if invoice is None:
            return None
        if stripe_invoice.status == "paid" and invoice.status != Invoice.Status.PAID:
            previous = invoice.status
            invoice.status = Invoice.Status.PAID
            invoice.paid_at = timezone.now()
            invoice.save(update_fields=["status", "paid_at"])
            # What the customer paid: less than the amount when a credit note lowered it.
            paid_minor = getattr(stripe_invoice, "amount_paid", None)
            paid = (
                invoice.amount if paid_minor is None else from_minor(paid_minor, invoice.currency)
            )
            if paid > 0:
                LedgerEntry.objects.create(
                    organization=invoice.organization,
                    kind=LedgerEntry.Kind.INVOICE_PAYMENT,
                    amount=-paid,
                    currency=invoice.currency,
                    reservation=invoice.reservation,
                    invoice=invoice,
                    description=f"Payment of invoice {invoice.number or invoice.stripe_invoice_id}",
                )
            audit.record(
                action="invoice.paid",
                actor=None,
                organization=invoice.organization,
                target=invoice,
                data={"from": previous, "paid": str(paid), "currency": invoice.currency},
            )
        elif (
            stripe_invoice.status in ("uncollectible", "void")
            and invoice.status != stripe_invoice.status
        ):
            previous = invoice.status
            invoice.status = stripe_invoice.status
            invoice.save(update_fields=["status"])
            audit.record(
                action=f"invoice.{stripe_invoice.status}",
                actor=None,
                organization=invoice.organization,
                target=invoice,
                data={"from": previous, "to": stripe_invoice.status},
            )
    return invoice


def invoice_payment_failed(*, stripe_invoice_id: str) -> None:
    invoice = invoice_sync(stripe_invoice_id=stripe_invoice_id)
    if invoice is None or invoice.status == Invoice.Status.PAID:
        return
    with transaction.atomic():
        updated = Invoice.objects.filter(pk=invoice.pk, payment_failed=False).update(
            payment_failed=True
        )
        if updated:
            audit.record(
                action="invoice.payment_failed",
                actor=None,
                organization=invoice.organization,
                target=invoice,
            )
    flag_raise(
        FinanceFlag.Kind.INVOICE_FAILED,
        stripe_invoice_id,
        f"Payment of invoice {invoice.number or stripe_invoice_id} failed.",
        organization=invoice.organization,
    )


def dispute_opened(*, dispute_id: str) -> None:
    dispute = gateway.dispute_retrieve(dispute_id)
    intent_id = getattr(dispute, "payment_intent", None)
    if intent_id is None and getattr(dispute, "charge", None):
        charge = gateway.charge_retrieve(
            dispute.charge if isinstance(dispute.charge, str) else dispute.charge.id
        )
        intent_id = getattr(charge, "payment_intent", None)
    intent_id = intent_id if isinstance(intent_id, str) or intent_id is None else intent_id.id
    payment = (
        Payment.objects.filter(stripe_payment_intent_id=intent_id).first() if intent_id else None
    )
    amount = from_minor(dispute.amount, dispute.currency)
    reason = dispute.reason or "no reason given"
    detail = f"Dispute {dispute_id} over {format_money(amount, dispute.currency)}: {reason}."
    with transaction.atomic():
        if payment is not None and Payment.objects.filter(pk=payment.pk, flagged=False).update(
            flagged=True, flag_reason=detail[:300]
        ):
            audit.record(
                action="payment.disputed",
                actor=None,
                organization=payment.organization,
                target=payment,
                data={"dispute": dispute_id, "amount": str(amount), "currency": dispute.currency},
                reason=reason,
            )
    flag_raise(FinanceFlag.Kind.DISPUTE, dispute_id, detail, payment=payment)


# --- Flags and mail -----------------------------------------------------------------------------
def flag_raise(
    kind: str,
    stripe_object_id: str,
    detail: str,
    *,
    payment: Payment | None = None,
    organization: Organization | None = None,
) -> bool:
    """Tell finance, once per object and kind (audited); False when it was already told."""
    organization = organization or (payment.organization if payment else None)
    try:
        with transaction.atomic():
            flag = FinanceFlag.objects.create(
                kind=kind,
                stripe_object_id=stripe_object_id,
                detail=detail,
                payment=payment,
                organization=organization,
            )
            audit.record(
                action="finance_flag.raised",
                actor=None,
                organization=organization,
                target=flag,
                data={"kind": kind, "stripe_object": stripe_object_id},
                reason=detail,
            )
    except IntegrityError:
        return False
    logger.warning("finance flag %s on %s: %s", kind, stripe_object_id, detail)
    return True


def _mail_billing(organization: Organization, template: str, **context: Any) -> None:
    context.setdefault("organization", organization)
    context["url"] = reverse("billing", args=[organization.slug])
    queue_email(to=organization.billing_email, template=template, context=context)
