"""Disputes: the disputed payment is flagged and finance is told; a lost one is booked, a won
one gives the payment back to settlement.

While a dispute is open the payment is flagged, so settlement, the money a reservation holds
and SLA credits leave it alone (the bank may take it back). One that closes in our favour
(status `won`, or `warning_closed`: an inquiry that never became a chargeback) clears that
flag and resolves finance's dispute flag with a note, so the payment counts as paid again.

A dispute the customer wins at the bank (`charge.dispute.closed`, status `lost`) means Stripe
took the money back: the ledger books it once as owed again, finance is told, and the
organization takes no new reservations until finance resolves the flag
(`selectors.reservations_refused_for_org`).
"""

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

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


# Closed without Stripe taking the money: the payment stands.
CLOSED_IN_OUR_FAVOUR = ("won", "warning_closed")


def dispute_close_record(*, dispute_id: str) -> None:
    """`charge.dispute.closed`: re-read the dispute; a lost one is booked as owed again, a won
    one (or a warning closed) clears the payment's flag. Once however often the event comes."""
    dispute = gateway.dispute_retrieve(dispute_id)
    if dispute.status in CLOSED_IN_OUR_FAVOUR:
        _dispute_won(dispute_id, dispute)
        return
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


def _dispute_won(dispute_id: str, dispute: Any) -> None:
    """Clear the flag the dispute put on its payment (audited) and resolve finance's dispute
    flag with a system note. A flag raised for something else (an amount that did not match)
    is left for finance."""
    payment = _disputed_payment(dispute)
    note = (
        f"Closed by the system: dispute {dispute_id} was {dispute.status.replace('_', ' ')}; "
        "the payment stands and settlement treats it as paid again."
    )
    with transaction.atomic():
        if payment is not None and Payment.objects.filter(
            pk=payment.pk, flagged=True, flag_reason__startswith=f"Dispute {dispute_id} "
        ).update(flagged=False, flag_reason=""):
            audit.record(
                action="payment.dispute_won",
                actor=None,
                organization=payment.organization,
                target=payment,
                data={"dispute": dispute_id, "status": dispute.status},
                reason=note,
            )
        flag = (
            FinanceFlag.objects.select_for_update()
            .filter(
                kind=FinanceFlag.Kind.DISPUTE, stripe_object_id=dispute_id, resolved_at__isnull=True
            )
            .first()
        )
        if flag is not None:
            flag.resolved_at = timezone.now()
            flag.resolution = note
            flag.save(update_fields=["resolved_at", "resolution"])
            audit.record(
                action="finance_flag.resolved",
                actor=None,
                organization=flag.organization,
                target=flag,
                data={"kind": flag.kind, "object": flag.stripe_object_id},
                reason=note,
            )
