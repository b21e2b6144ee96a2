"""Settling a reservation: the refund or invoice credit it is due, its invoice, stuck refunds."""

import logging
from decimal import Decimal

from django.conf import settings
from django.db import transaction

from capacity.models import Reservation
from core import audit
from core.money import format_money, to_minor
from core.tasks import enqueue_after_commit

from .. import gateway
from ..models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund
from .accounts import billing_email_queue
from .flags import flag_raise
from .invoices import invoice_issue
from .refunds import AlreadySettled, refund_fail, refund_open, refund_send

logger = logging.getLogger(__name__)
S = Reservation.State


def settlement_enqueue(reservation_id: int) -> None:
    """RESERVATION_SETTLEMENT_HOOK: capacity's lifecycle calls this in the transaction that
    moved the reservation; settling runs in a task once that commits."""
    enqueue_after_commit("billing.settle_reservation", reservation_id=reservation_id)


def reservation_settle(*, reservation_id: int) -> None:
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
            invoice_issue(reservation=reservation)
        except gateway.GatewayUnavailable:
            raise  # transient: the task retries
        except gateway.PaymentError as exc:
            Invoice.objects.filter(reservation=reservation).update(last_error=exc.message[:300])
            logger.error("invoice for %s failed: %s", reservation.public_id, exc.message)
    # Refunds that were written but never reached Stripe (a crash in between).
    for refund in Refund.objects.filter(
        payment__reservation=reservation, status=Refund.Status.PENDING
    ):
        _refund_attempt(reservation, refund)


def _settle_refund(
    reservation: Reservation, amount: Decimal | None, reason: str, settles: str
) -> None:
    """Give back what a canceled or failed reservation is due (`amount`, or everything): to the
    cards it was paid with, then, for what is left, as a credit on its invoices. Once, however
    often it runs; refunds finance made before (goodwill, a partial refund) are already out of
    the money settled the amount was computed from (capacity.services.refund_amount)."""
    try:
        left = _refund_cards(reservation, amount, reason, settles)
    except AlreadySettled:  # a concurrent settlement is making the same refunds
        return
    if (left is None or left > 0) and Invoice.objects.filter(reservation=reservation).exists():
        _credit_invoice(reservation, left, reason)


def _refund_cards(
    reservation: Reservation, amount: Decimal | None, reason: str, settles: str
) -> Decimal | None:
    """Refund the reservation's card payments, the latest first (a paid extension's before the
    block's), up to `amount` (None: all that is left on each). Returns what is still due after
    them (None: everything, for the invoices too). A payment that already has its settling
    refund (made, in flight, or given up on and flagged) is passed over, so a run cut short
    part-way on with the next payment. A try Stripe failed is not a refund given: the payment
    gets one new try per run (the sweep's), up to SETTLEMENT_REFUND_ATTEMPTS. Its share stays
    the payment's meanwhile, and once given up on, is not moved to another card: finance
    decides where money a card could not take goes."""
    paid = list(
        reservation.payments.filter(status=Payment.Status.SUCCEEDED, flagged=False).order_by(
            "-succeeded_at", "-id"
        )
    )
    if amount is not None:
        done = (
            Refund.objects.filter(payment__in=paid, settles=settles)
            .exclude(status=Refund.Status.FAILED, refused=False)
            .values_list("amount", flat=True)
        )
        amount -= sum(done, Decimal("0.00"))
    for payment in paid:
        if amount is not None and amount <= 0:
            break
        settling = payment.refunds.filter(settles=settles)
        if settling.exclude(status=Refund.Status.FAILED, refused=False).exists():
            continue
        pending = sum(
            payment.refunds.filter(status=Refund.Status.PENDING).values_list("amount", flat=True),
            Decimal("0.00"),
        )
        left = payment.refundable - pending
        share = left if amount is None else min(amount, left)
        if share <= 0:
            continue
        refund = refund_open(
            payment=payment, amount=share, reason=reason, actor=None, settles=settles
        )
        refund = _refund_attempt(reservation, refund)
        if amount is not None:
            amount -= share  # made, or failed: either way this payment's to give
        if refund.status == Refund.Status.SUCCEEDED:
            billing_email_queue(
                reservation.organization, "payment_refunded", payment=payment, refund=refund
            )
    return amount


# The refunds settlement makes on its own, which it tries again and gives up on.
SETTLING = (Refund.Settles.CANCELLATION, Refund.Settles.FAILURE)
# Stripe's failure_reason values that another try may overcome (our Stripe balance was short,
# a partner declined for now, a reason Stripe does not know); any other is for good.
RETRYABLE_REFUND_FAILURES = frozenset({"insufficient_funds", "declined", "unknown", "failed"})


def _refund_attempt(reservation: Reservation, refund: Refund) -> Refund:
    """Send a pending refund of the reservation's. Stripe out of reach raises (the refund
    stays pending, the task retries). Stripe refusing it, or answering it failed, marks it
    failed with nothing booked; for a cancellation or failure refund, settlement then gives
    up when it was for good or the last try, and tells finance once."""
    try:
        refund = refund_send(refund)
    except gateway.GatewayUnavailable:
        raise
    except gateway.PaymentError as exc:
        if not refund_fail(refund=refund, error=exc, actor=None):
            return refund
        final = True
    else:
        if refund.status != Refund.Status.FAILED:
            return refund
        final = refund.failure_code not in RETRYABLE_REFUND_FAILURES
    if refund.settles in SETTLING:
        _refund_give_up(reservation, refund, final=final)
    elif not refund.settles:
        # A staff refund the sweep sent late (Stripe was out of reach when it was made): the
        # person who made it is no longer looking, so finance is told.
        flag_raise(
            FinanceFlag.Kind.RECONCILIATION,
            f"refund:{refund.public_id}",
            f"Stripe refused refund {refund.public_id} of "
            f"{format_money(refund.amount, refund.currency)} for {reservation.public_id}: "
            f"{refund.failure_message}",
            payment=refund.payment,
        )
    return refund


def _refund_give_up(reservation: Reservation, refund: Refund, *, final: bool) -> None:
    """After a failed settling refund: give up on the payment when Stripe refused it for good
    or it was the last try allowed; then the refund stands for the payment's settling refund
    (nothing tries again) and finance gets one flag naming the money not given back."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
        tries = payment.refunds.filter(settles=refund.settles, status=Refund.Status.FAILED)
        if not final and tries.count() < settings.SETTLEMENT_REFUND_ATTEMPTS:
            return
        if payment.refunds.filter(settles=refund.settles, refused=True).exists():
            return
        Refund.objects.filter(pk=refund.pk).update(refused=True)
        refund.refused = True
        money = format_money(refund.amount, refund.currency)
        what = "cancellation" if refund.settles == Refund.Settles.CANCELLATION else "failure"
        n = tries.count()
        flag_raise(
            FinanceFlag.Kind.RECONCILIATION,
            f"refund:{payment.stripe_payment_intent_id}:{refund.settles}",
            f"Stripe refused the {what} refund of {money} for {reservation.public_id} "
            f"(payment {payment.public_id}) after {n} {'try' if n == 1 else 'tries'}: "
            f"{refund.failure_message} The customer has not got these {money} back and "
            "settlement will not try again.",
            payment=payment,
        )


def _credit_invoice(reservation: Reservation, amount: Decimal | None, reason: str) -> None:
    """Credit the invoice of a canceled or failed reservation on invoice terms: void it when
    nothing is owed any more and it is still open, else a Stripe credit note for the amount
    (on a paid invoice, to the customer's balance). The ledger books the credit once."""
    invoice = Invoice.objects.get(reservation=reservation)
    if not invoice.stripe_invoice_id:
        return  # never sent, nothing booked: invoice_issue no longer sends it
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
    billing_email_queue(
        reservation.organization, "invoice_credited", invoice=locked, credit=credit,
        reservation=reservation, voided=voided,
    )  # fmt: skip
