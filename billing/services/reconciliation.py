"""Daily reconciliation: our payments against Stripe's, every difference recorded for finance."""

from datetime import timedelta

from django.utils import timezone

from core.money import from_minor

from .. import gateway
from ..models import FinanceFlag, Payment
from .flags import flag_raise
from .payments import amount_received, payment_sync

WINDOW = timedelta(days=2)


def payments_reconcile() -> int:
    """Compare the last two days of PaymentIntents; returns how many differences were found.
    Running it twice records nothing new (a flag exists once per object and kind)."""
    since = timezone.now() - WINDOW
    theirs = {
        intent.id: intent
        for intent in gateway.payment_intents_list(created_after=int(since.timestamp()))
    }
    ours = {
        p.stripe_payment_intent_id: p
        for p in Payment.objects.filter(
            created_at__gte=since - timedelta(hours=1),
            stripe_payment_intent_id__isnull=False,
        )
        if p.stripe_payment_intent_id is not None  # for the type checker: the filter says so
    }
    differences = 0
    for intent_id, intent in theirs.items():
        payment = ours.get(intent_id)
        if payment is None:
            if intent.status == "succeeded":
                differences += _flag(
                    intent_id, f"Stripe took a payment we have no record of ({intent_id})."
                )
            continue
        if intent.status == "succeeded" and payment.status not in Payment.RECEIVED:
            differences += _flag(
                intent_id,
                f"{payment.public_id} is {payment.status} here but paid in Stripe; applied now.",
            )
            payment_sync(payment_intent_id=intent_id)
        elif intent.status != "succeeded" and payment.status in Payment.RECEIVED:
            differences += _flag(
                intent_id, f"{payment.public_id} is paid here but {intent.status} in Stripe."
            )
        elif intent.status == "succeeded":
            received = from_minor(amount_received(intent), intent.currency)
            if received != payment.amount or intent.currency != payment.currency:
                differences += _flag(
                    intent_id,
                    f"{payment.public_id}: {payment.amount} {payment.currency} here, "
                    f"{received} {intent.currency} in Stripe.",
                )
    for intent_id, payment in ours.items():
        if intent_id not in theirs and payment.status in Payment.RECEIVED:
            differences += _flag(
                intent_id, f"{payment.public_id} is paid here but unknown to Stripe."
            )
    return differences


def _flag(intent_id: str, detail: str) -> int:
    payment = Payment.objects.filter(stripe_payment_intent_id=intent_id).first()
    raised = flag_raise(FinanceFlag.Kind.RECONCILIATION, intent_id, detail, payment=payment)
    return 1 if raised else 0
