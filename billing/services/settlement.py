"""Settling a reservation: the refund or invoice credit it is due, its invoice, stuck refunds."""

import logging
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum

from capacity.models import Extension, Reservation
from core.errors import ServiceError
from core.money import format_money
from core.tasks import enqueue_after_commit

from .. import gateway
from ..models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund
from . import invoices
from .accounts import billing_email_queue
from .extensions import extension_invoice_settle
from .flags import flag_raise
from .lapses import reservation_lapse_settle
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
    reservation_lapse_settle(reservation)  # payments still open for what lapsed: canceled
    if reservation.state == S.CANCELED and _invoiced(reservation):
        _settle_canceled_on_invoice(reservation)
    elif reservation.state == S.CANCELED and reservation.refund_due:
        _settle_refund(
            reservation,
            reservation.refund_due,
            "Cancellation refund per the policy.",
            Refund.Settles.CANCELLATION,
        )
    elif reservation.state == S.FAILED:
        block = invoices.block_invoice(reservation)
        if block is not None:
            invoices.invoice_abandon(invoice=block, reason="Provisioning failed before sending.")
        _settle_refund(
            reservation, None, "Provisioning failed: full refund.", Refund.Settles.FAILURE
        )
    elif reservation.state in (S.SCHEDULED, S.PROVISIONING, S.ACTIVE) and _invoiced(reservation):
        _invoice_block(reservation, Decimal("0.00"))
    # Extensions on invoice terms whose invoice did not go out yet (Stripe was away).
    # After the last try one is finance's, until its hold ends and takes it along.
    for invoice in Invoice.objects.filter(
        reservation=reservation,
        extension__isnull=False,
        status=Invoice.Status.PENDING,
        stripe_invoice_id__isnull=True,
    ).exclude(attempts__gte=invoices.max_attempts(), extension__state=Extension.State.HELD):
        extension_invoice_settle(invoice=invoice)
    # Refunds that were written but never reached Stripe (a crash in between).
    for refund in Refund.objects.filter(
        payment__reservation=reservation, status=Refund.Status.PENDING
    ):
        _refund_attempt(reservation, refund)


def _settle_canceled_on_invoice(reservation: Reservation) -> None:
    """A canceled block on invoice terms. When its invoice never went out, what the customer
    keeps paying for (its price less the policy's refund) is invoiced now, and only the rest
    of the refund (the extensions' share) is credited on the invoices already sent."""
    due = reservation.refund_due or Decimal("0.00")
    block = invoices.block_invoice(reservation)
    if block is None or (
        block.stripe_invoice_id is None and block.status == Invoice.Status.PENDING
    ):
        _invoice_block(reservation, min(due, invoices.block_amount(reservation)))
        block = invoices.block_invoice(reservation)
        if block is not None and block.status == Invoice.Status.PENDING:
            return  # not sent (Stripe away): nothing is credited before it is
    waived = block.waived if block is not None else Decimal("0.00")
    if due - waived > 0:
        _settle_refund(
            reservation,
            due - waived,
            "Cancellation refund per the policy.",
            Refund.Settles.CANCELLATION,
        )


def _invoiced(reservation: Reservation) -> bool:
    """Whether the block's own hours are billed by invoice: on invoice terms, confirmed (a
    canceled hold has no refund due: it was never sold) and not paid by card (paid while the
    organization was still on card terms, or a quote paid by card)."""
    if not reservation.organization.on_invoice_terms:
        return bool(Invoice.objects.filter(reservation=reservation, extension=None).exists())
    if reservation.state == S.CANCELED and reservation.refund_due is None:
        return False
    return not reservation.payments.filter(
        status=Payment.Status.SUCCEEDED, extension__isnull=True
    ).exists()


def _invoice_block(reservation: Reservation, waived: Decimal) -> None:
    """Send the block's invoice; a failure is counted for the sweep (which tries again up to
    INVOICE_CREATE_MAX_ATTEMPTS and then tells finance), so it is never silently lost."""
    block = invoices.block_invoice(reservation)
    if block is not None and block.attempts >= invoices.max_attempts():
        return  # finance was told; it is theirs now
    try:
        invoices.invoice_issue(reservation=reservation, waived=waived)
    except gateway.PaymentError as exc:  # counted on the invoice; the sweep tries again
        logger.error("invoice for %s failed: %s", reservation.public_id, exc.message)


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
        try:
            refund = refund_open(
                payment=payment, amount=share, reason=reason, actor=None, settles=settles
            )
        except ServiceError as exc:
            if exc.code != "refund_too_large":
                raise
            # Money left this payment since it was read (another refund, under its lock): this
            # run stops; the sweep settles it again from what is there then.
            logger.warning("settling %s: %s", reservation.public_id, exc.message)
            return Decimal("0.00")
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
    """Credit a canceled or failed reservation on invoice terms: its sent invoices (the
    block's and each applied extension's), the latest first, up to `amount` (None: all of
    them). Each is credited once (void when open and credited in full, else a credit note);
    what earlier runs credited counts, so running again credits nothing more. An invoice that
    is void or uncollectible (here, or at Stripe when we have not heard yet) takes nothing:
    its share goes to the next one, and what none can take is told to finance, once."""
    creditable = (Invoice.Status.OPEN, Invoice.Status.PAID)
    sent = [
        invoice
        for invoice in Invoice.objects.filter(
            reservation=reservation, stripe_invoice_id__isnull=False
        )
        .select_related("extension", "organization")
        .order_by("-created_at", "-id")
        # An extension's invoice withdrawn before it was applied is no part of what was sold.
        if invoice.extension is None or invoice.extension.state == Extension.State.PAID
    ]
    credited = {
        row["invoice"]: -row["total"]
        for row in LedgerEntry.objects.filter(
            kind=LedgerEntry.Kind.CREDIT, invoice__in=sent, sla_credit__isnull=True
        )
        .values("invoice")
        .annotate(total=Sum("amount"))
    }
    left = None if amount is None else amount - sum(credited.values(), Decimal("0.00"))
    for invoice in sent:
        if invoice.pk in credited or invoice.status not in creditable:
            continue
        if left is not None and left <= 0:
            return
        share = invoice.amount if left is None else min(left, invoice.amount)
        done = invoices.invoice_credit(
            invoice=invoice, amount=share, reason=reason, reservation=reservation
        )
        if done <= 0:
            if invoice.status not in creditable:
                continue  # void or written off at Stripe meanwhile: the next one takes it
            return  # Stripe refused it and finance was told: crediting another is theirs
        if left is not None:
            left -= done
    if left is not None and left > 0:
        money = format_money(left, reservation.currency)
        flag_raise(
            FinanceFlag.Kind.RECONCILIATION,
            f"credit:{reservation.public_id}",
            f"{money} of the credit due for {reservation.public_id} ({reason}) was not given: "
            "none of its invoices is open or paid at Stripe to take it. Settle it with the "
            "customer (a credit on another invoice, a refund), then resolve this flag.",
            organization=reservation.organization,
        )
