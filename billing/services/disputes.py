"""Disputes: the disputed payment is flagged and finance is told; a lost one is booked.

A dispute the customer wins at the bank (`charge.dispute.closed`, status `lost`) means Stripe
took the money back: the ledger books it once as owed again, finance is told, and the
organization takes no new reservations until finance resolves the flag
(`selectors.reservations_refused_for_org`).
"""

from typing import Any

from django.db import IntegrityError, transaction

from core import audit
from core.money import format_money, from_minor

from .. import gateway
from ..models import FinanceFlag, LedgerEntry, Payment
from .flags import flag_raise


def _disputed_payment(dispute: Any) -> Payment | None:
    intent_id = getattr(dispute, "payment_intent", None)
    if intent_id is None and getattr(dispute, "charge", None):
        charge = gateway.charge_retrieve(
            dispute.charge if isinstance(dispute.charge, str) else dispute.charge.id
        )
        intent_id = getattr(charge, "payment_intent", None)
    intent_id = intent_id if isinstance(intent_id, str) or intent_id is None else intent_id.id
    return Payment.objects.filter(stripe_payment_intent_id=intent_id).first() if intent_id else None


def dispute_record(*, dispute_id: str) -> None:
    dispute = gateway.dispute_retrieve(dispute_id)
    payment = _disputed_payment(dispute)
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


def dispute_close_record(*, dispute_id: str) -> None:
    """`charge.dispute.closed`: re-read the dispute; only a lost one moves money (won ones and
    warnings closed change nothing). Booked once however often the event comes."""
    dispute = gateway.dispute_retrieve(dispute_id)
    if dispute.status != "lost":
        return
    payment = _disputed_payment(dispute)
    amount = from_minor(dispute.amount, dispute.currency)
    money = format_money(amount, dispute.currency)
    if payment is None:
        flag_raise(
            FinanceFlag.Kind.DISPUTE_LOST,
            dispute_id,
            f"Dispute {dispute_id} over {money} was lost on a payment we do not know.",
        )
        return
    organization = payment.organization
    try:
        with transaction.atomic():
            LedgerEntry.objects.create(
                organization=organization,
                kind=LedgerEntry.Kind.DISPUTE_LOSS,
                amount=amount,
                currency=dispute.currency,
                reservation=payment.reservation,
                payment=payment,
                description=f"Dispute {dispute_id} lost: Stripe took back {money} of "
                f"{payment.public_id}",
            )
            audit.record(
                action="payment.dispute_lost",
                actor=None,
                organization=organization,
                target=payment,
                data={"dispute": dispute_id, "amount": str(amount), "currency": dispute.currency},
                reason=dispute.reason or "",
            )
    except IntegrityError:
        pass  # booked by an earlier delivery of the event; the flag below is once as well
    flag_raise(
        FinanceFlag.Kind.DISPUTE_LOST,
        dispute_id,
        f"Dispute {dispute_id} over {money} on {payment.public_id} "
        f"({payment.reservation.public_id}) was lost: the money went back to the customer and is "
        f"owed again. {organization.name} takes no new reservations until this is resolved.",
        payment=payment,
    )
