"""Disputes: the disputed payment is flagged and finance is told."""

from django.db import transaction

from core import audit
from core.money import format_money, from_minor

from .. import gateway
from ..models import FinanceFlag, Payment
from .flags import flag_raise


def dispute_record(*, dispute_id: str) -> None:
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
