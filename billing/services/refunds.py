"""Refunds: written first, sent to Stripe, booked once; refunds made in Stripe; refunds by staff."""

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum

from accounts.models import User
from core import audit
from core.errors import Conflict, ServiceError
from core.money import ZERO_DECIMAL, format_money, from_minor, to_minor
from core.staff import reason_clean

from .. import gateway
from ..models import LedgerEntry, Payment, Refund
from .accounts import require_finance_staff


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
        # A try Stripe failed leaves room for another, unless settlement gave up on it.
        given = locked.refunds.filter(settles=settles).exclude(
            status=Refund.Status.FAILED, refused=False
        )
        if settles and given.exists():
            raise AlreadySettled("This payment has already been refunded for that.")
        refund = Refund.objects.create(
            payment=locked,
            amount=amount,
            currency=locked.currency,
            reason=reason,
            created_by=actor,
            settles=settles,
        )
    return refund


def refund_send(refund: Refund) -> Refund:
    payment = refund.payment
    if not payment.stripe_payment_intent_id:
        raise Conflict("This payment never reached Stripe; there is nothing to refund.")
    stripe_refund = gateway.refund_create(
        payment_intent_id=payment.stripe_payment_intent_id,
        amount_minor=to_minor(refund.amount, refund.currency),
        metadata={"refund": refund.public_id, "payment": payment.public_id},
        idempotency_key=f"refund:{refund.public_id}",
    )
    return _book_refund(
        refund.pk,
        stripe_refund.id,
        stripe_refund.status,
        getattr(stripe_refund, "failure_reason", None) or "",
    )


def _book_refund(
    refund_pk: int, stripe_refund_id: str, stripe_status: str, failure_reason: str = ""
) -> Refund:
    """Book what Stripe says of a refund of ours, once: a success moves the money in the
    ledger; a refund Stripe failed or canceled moved nothing, so it books nothing."""
    with transaction.atomic():
        refund = Refund.objects.select_for_update().select_related("payment").get(pk=refund_pk)
        if refund.status in (Refund.Status.SUCCEEDED, Refund.Status.FAILED):
            return refund
        refund.stripe_refund_id = stripe_refund_id
        if stripe_status in ("failed", "canceled"):
            code = failure_reason or stripe_status
            refund.status = Refund.Status.FAILED
            refund.failure_code = code[:64]
            refund.failure_message = f"Stripe {stripe_status} the refund ({code})."[:300]
            refund.save(
                update_fields=["stripe_refund_id", "status", "failure_code", "failure_message"]
            )
            _audit_failed(refund, None)
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
            ours_id = gateway.as_dict(getattr(stripe_refund, "metadata", None)).get("refund")
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


@dataclass(frozen=True)
class RefundPosition:
    """Where a payment stands: what was paid, refunded, in flight and still refundable."""

    paid: Decimal
    refunded: Decimal
    pending: Decimal
    currency: str

    @property
    def refundable(self) -> Decimal:
        return max(self.paid - self.refunded - self.pending, Decimal("0.00"))


def refund_position_for_payment(payment: Payment) -> RefundPosition:
    pending = payment.refunds.filter(status=Refund.Status.PENDING).aggregate(s=Sum("amount"))["s"]
    return RefundPosition(
        paid=payment.amount,
        refunded=payment.amount_refunded,
        pending=pending or Decimal("0.00"),
        currency=payment.currency,
    )


def refund_check(*, payment: Payment, amount: Decimal, reason: str, actor: User) -> None:
    """Raise the error a refund of `amount` would meet, without changing anything."""
    require_finance_staff(actor, "billing.issue_refund", "Only finance staff can refund payments.")
    if payment.status not in Payment.RECEIVED:
        raise Conflict(
            f"Only a successful payment can be refunded; this one is "
            f"{payment.get_status_display().lower()}.",
            code="not_refundable",
        )
    reason_clean(reason, missing="Say why the money goes back; the reason is kept.")
    if not amount.is_finite() or amount <= 0:
        raise ServiceError("Refund an amount above zero.", param="amount")
    places = 0 if payment.currency.lower() in ZERO_DECIMAL else 2
    # The exponent, not quantize: quantizing a huge amount raises instead of answering.
    exponent = amount.normalize().as_tuple().exponent  # an int: the amount is finite
    if isinstance(exponent, int) and -exponent > places:
        raise ServiceError(
            f"{payment.currency.upper()} amounts have at most {places} decimal places.",
            param="amount",
        )
    position = refund_position_for_payment(payment)
    if amount > position.refundable:
        raise ServiceError(
            f"At most {format_money(position.refundable, payment.currency)} can still be "
            "refunded on this payment.",
            code="refund_too_large",
            param="amount",
        )


def staff_refund_issue(*, payment: Payment, amount: Decimal, reason: str, actor: User) -> Refund:
    """Refund part or all of a payment on a staff member's say-so.

    The pending refund and the audit of the request are committed before Stripe is called
    (the refund's id is the idempotency key), so a timeout cannot pay out twice. If Stripe
    refuses, the refund is marked failed with Stripe's message and the PaymentError is raised;
    if Stripe cannot be reached the refund stays pending and the settlement sweep sends it.
    """
    reason = reason.strip()
    refund_check(payment=payment, amount=amount, reason=reason, actor=actor)
    with transaction.atomic():
        # refund_open re-checks what is left under the payment's lock.
        refund = refund_open(payment=payment, amount=amount, reason=reason, actor=actor)
        audit.record(
            action="refund.requested",
            actor=actor,
            organization=payment.organization,
            target=refund,
            data={
                "payment": payment.public_id,
                "amount": str(amount),
                "currency": refund.currency,
            },
            reason=reason,
        )
    try:
        return refund_send(refund)
    except gateway.GatewayUnavailable:
        raise
    except gateway.PaymentError as exc:
        refund_fail(refund=refund, error=exc, actor=actor)
        raise


@transaction.atomic
def refund_fail(*, refund: Refund, error: gateway.PaymentError, actor: User | None) -> bool:
    """Mark a pending refund that Stripe refused (an error, not a refund) failed, with its
    message and code, audited; False when it was no longer pending. Nothing is booked."""
    updated = Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(
        status=Refund.Status.FAILED,
        failure_message=error.message[:300],
        failure_code=(error.code or "")[:64],
    )
    if updated:
        refund.refresh_from_db()
        _audit_failed(refund, actor)
    return bool(updated)


def _audit_failed(refund: Refund, actor: User | None) -> None:
    audit.record(
        action="refund.failed",
        actor=actor,
        organization=refund.payment.organization,
        target=refund,
        data={"payment": refund.payment.public_id, "message": refund.failure_message},
        reason=refund.reason,
    )
