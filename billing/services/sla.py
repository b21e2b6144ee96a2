"""SLA credits: the time a block fell short of what was sold, priced and paid back once.

Capacity measures the minutes lost and calls SLA_CREDIT_HOOK (capacity/incidents.py says when
each cause is measured: only once the time lost is known, so a repeated trigger measures the
same). `sla_credit_enqueue` hands them to a task after the commit; `sla_credit_grant` prices them
with settings.SLA_CREDIT_POLICY, caps the credit at what is still paid for the block (payments
less refunds, invoices less credits, less earlier SLA credits), writes the `SlaCredit` once per
(reservation, cause, key) under the reservation's lock, then pays it back: refunds to the card
payments, latest first, or a Stripe credit note on the latest invoice on invoice terms. Each
money movement is booked in the ledger with its audit event in one transaction (a refund by
`refund_issue`, a credit note here); the customer is e-mailed once the credit is granted.
"""

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from capacity import incidents
from capacity.models import Reservation
from core import audit
from core.errors import ServiceError
from core.money import ZERO_DECIMAL, format_money, to_minor
from core.tasks import enqueue_after_commit

from .. import gateway
from ..models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund, SlaCredit
from .accounts import billing_email_queue
from .flags import flag_raise
from .invoices import invoice_sync
from .refunds import AlreadySettled, refund_issue, refund_send

logger = logging.getLogger(__name__)
ZERO = Decimal("0.00")
Cause = SlaCredit.Cause
LIVE = (SlaCredit.Status.PENDING, SlaCredit.Status.GRANTED)
# Credits go on sent invoices the customer owes or has paid; a void one is owed nothing.
CREDITABLE_INVOICE = (Invoice.Status.OPEN, Invoice.Status.PAID)


def sla_credit_enqueue(*, reservation_id: int, cause: str, key: str, minutes: int) -> None:
    """SLA_CREDIT_HOOK: capacity measured `minutes` lost; the grant runs in a task after the
    commit (a rolled-back release or resolution asks for nothing)."""
    enqueue_after_commit(
        "billing.grant_sla_credit",
        reservation_id=reservation_id,
        cause=cause,
        key=key,
        minutes=minutes,
    )


# --- The sweep ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlaDue:
    """One grant for the task to run (again): its arguments."""

    reservation_id: int
    cause: str
    key: str
    minutes: int


def sla_credits_due(*, now: datetime | None = None) -> list[SlaDue]:
    """What the sweep hands to the grant task: credits left pending (the task's message lost
    while the broker was down, its retries used up, a refund still in flight), then the
    shortfalls of blocks that ended in the last SLA_CREDIT_SWEEP_DAYS, measured again from
    their records (capacity.incidents.sla_shortfalls), that have no credit yet. Only what is
    older than SLA_CREDIT_SWEEP_STALE, so a grant just asked for is left to its task (a
    duplicate would still credit once: the grant is idempotent). Shortfalls the policy gives
    nothing for, or for blocks with nothing paid left, are not handed on."""
    now = now or timezone.now()
    stale = now - settings.SLA_CREDIT_SWEEP_STALE
    due = [
        SlaDue(credit.reservation_id, credit.cause, credit.key, credit.minutes)
        for credit in SlaCredit.objects.filter(
            status=SlaCredit.Status.PENDING, created_at__lt=stale
        ).order_by("pk")
    ]
    finished = incidents.reservations_short(
        Reservation.objects.filter(
            state=Reservation.State.COMPLETED,
            ends_at__gte=now - timedelta(days=settings.SLA_CREDIT_SWEEP_DAYS),
            updated_at__lt=stale,
        )
    ).order_by("pk")
    credited = set(
        SlaCredit.objects.filter(reservation__in=finished).values_list(
            "reservation_id", "cause", "key"
        )
    )
    for reservation in finished:
        for shortfall in incidents.sla_shortfalls(reservation):
            if (reservation.pk, shortfall.cause, shortfall.key) in credited:
                continue
            quote = sla_credit_quote(
                reservation=reservation, cause=shortfall.cause, minutes=shortfall.minutes
            )
            if quote is None or quote.amount <= 0:
                continue
            if sla_credit_cap(reservation)[0] <= 0:
                break  # nothing paid is left to credit from
            due.append(SlaDue(reservation.pk, *shortfall))
    return due


# --- The policy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlaQuote:
    node_hours: Decimal
    percent: Decimal
    amount: Decimal  # before the cap


def _unit(currency: str) -> Decimal:
    return Decimal(1) if currency.lower() in ZERO_DECIMAL else Decimal("0.01")


def sla_credit_quote(*, reservation: Reservation, cause: str, minutes: int) -> SlaQuote | None:
    """What the policy gives for `minutes` lost to `cause`; None when it gives nothing.

    Priced at what the block was sold for per node-hour (its total over its nodes and hours,
    so a duration discount or a negotiated rate carries into the credit), never a list price."""
    rule = settings.SLA_CREDIT_POLICY.get(cause)
    if not rule:
        return None
    percent = Decimal(str(rule.get("percent", 0)))
    if percent <= 0 or minutes <= 0 or minutes < int(rule.get("grace_minutes", 0)):
        return None
    hours = (
        Decimal(math.ceil(minutes / 60))
        if rule.get("round_up_to_hour")
        else Decimal(minutes) / Decimal(60)
    )
    # A failed node is one node of the block; a late start or a release is all of them.
    nodes = 1 if cause == Cause.DEGRADED else reservation.node_count
    sold_hours = Decimal(int((reservation.ends_at - reservation.starts_at).total_seconds()))
    sold_node_hours = sold_hours / Decimal(3600) * reservation.node_count
    if sold_node_hours <= 0:
        return None
    node_hours = hours * nodes
    # One rounding, at the end: an exact node-hour price times a fraction of an hour.
    amount = (reservation.total * node_hours * percent / (sold_node_hours * 100)).quantize(
        _unit(reservation.currency), ROUND_HALF_UP
    )
    return SlaQuote(
        node_hours=node_hours.quantize(Decimal("0.0001"), ROUND_HALF_UP),
        percent=percent,
        amount=amount,
    )


# --- What is still paid ----------------------------------------------------------------------
def _card_payments(reservation: Reservation) -> list[Payment]:
    """The block's card payments a credit may go back to, the latest first."""
    return list(
        Payment.objects.filter(
            reservation=reservation, status=Payment.Status.SUCCEEDED, flagged=False
        ).order_by("-succeeded_at", "-id")
    )


def _latest_invoice(reservation: Reservation) -> Invoice | None:
    return (
        Invoice.objects.filter(
            reservation=reservation,
            stripe_invoice_id__isnull=False,
            status__in=CREDITABLE_INVOICE,
        )
        .order_by("-created_at", "-id")
        .first()
    )


def _invoice_room(invoice: Invoice) -> Decimal:
    """What an invoice can still be credited: its amount less the credits booked on it (a
    cancellation's) and the SLA credits on it (pending ones too: their ledger rows, written
    once granted, are left out of the first sum so none is counted twice)."""
    booked = (
        LedgerEntry.objects.filter(
            invoice=invoice, kind=LedgerEntry.Kind.CREDIT, sla_credit__isnull=True
        ).aggregate(s=Sum("amount"))["s"]
        or ZERO
    )
    sla = invoice.sla_credits.filter(status__in=LIVE).aggregate(s=Sum("amount"))["s"] or ZERO
    return invoice.amount + booked - sla


def sla_credit_cap(reservation: Reservation) -> tuple[Decimal, Invoice | None]:
    """What may still be credited for the block, and the invoice a credit note goes on (None:
    refunds to the card). On invoice terms it is the latest invoice's room; by card, payments
    less every refund (in flight too) and less the SLA credits not yet refunded."""
    if Invoice.objects.filter(reservation=reservation).exists():
        invoice = _latest_invoice(reservation)
        return (max(_invoice_room(invoice), ZERO), invoice) if invoice else (ZERO, None)
    payments = _card_payments(reservation)
    paid = sum((p.amount for p in payments), ZERO)
    live = SlaCredit.objects.filter(
        reservation=reservation, method=SlaCredit.Method.REFUND, status__in=LIVE
    )
    live_settles = [credit.refund_settles for credit in live]
    refunded = (
        Refund.objects.filter(
            payment__in=payments, status__in=[Refund.Status.PENDING, Refund.Status.SUCCEEDED]
        )
        .exclude(settles__in=live_settles)
        .aggregate(s=Sum("amount"))["s"]
        or ZERO
    )
    credited = live.aggregate(s=Sum("amount"))["s"] or ZERO
    return max(paid - refunded - credited, ZERO), None


# --- Granting ----------------------------------------------------------------------------------
def sla_credit_grant(
    *, reservation_id: int, cause: str, key: str, minutes: int
) -> SlaCredit | None:
    """Credit `minutes` lost to `cause` once per (reservation, cause, key); None when the policy
    or the cap leaves nothing. Safe to run again: an existing credit is returned, and a pending
    one is paid back where it stopped (refunds settle "sla:<id>" once per payment, the credit
    note carries the credit's id as its idempotency key). Raises GatewayUnavailable for the
    task to retry."""
    if cause not in Cause.values:
        raise ServiceError(f"Unknown SLA credit cause {cause!r}.", param="cause")
    if minutes < 0:
        raise ServiceError("The time lost cannot be negative.", param="minutes")
    credit = _credit_open(reservation_id=reservation_id, cause=cause, key=key, minutes=minutes)
    if credit is None or credit.status != SlaCredit.Status.PENDING:
        return credit
    if credit.method == SlaCredit.Method.CREDIT_NOTE:
        return _credit_note(credit)
    return _credit_refund(credit)


def _reason(credit: SlaCredit, reservation: Reservation) -> str:
    return (
        f"SLA credit {credit.public_id} for {reservation.public_id}: {credit.get_cause_display()}"
    )


@transaction.atomic
def _credit_open(*, reservation_id: int, cause: str, key: str, minutes: int) -> SlaCredit | None:
    # The reservation's lock serializes its credits, so two causes at once cannot both take
    # the same room under the cap.
    reservation = (
        Reservation.objects.select_for_update(of=("self",))
        .select_related("organization")
        .get(pk=reservation_id)
    )
    existing = SlaCredit.objects.filter(reservation=reservation, cause=cause, key=key).first()
    if existing is not None:
        return existing
    quote = sla_credit_quote(reservation=reservation, cause=cause, minutes=minutes)
    if quote is None or quote.amount <= 0:
        return None
    cap, invoice = sla_credit_cap(reservation)
    amount = min(quote.amount, cap)
    if amount <= 0:
        logger.info("SLA credit for %s %s: nothing paid is left", reservation.public_id, cause)
        return None
    credit = SlaCredit.objects.create(
        organization=reservation.organization,
        reservation=reservation,
        cause=cause,
        key=key,
        minutes=minutes,
        node_hours=quote.node_hours,
        percent=quote.percent,
        computed=quote.amount,
        amount=amount,
        currency=reservation.currency,
        method=SlaCredit.Method.CREDIT_NOTE if invoice else SlaCredit.Method.REFUND,
        invoice=invoice,
    )
    audit.record(
        action="sla_credit.opened",
        actor=None,
        organization=reservation.organization,
        target=reservation,
        data={
            "credit": credit.public_id,
            "cause": cause,
            "key": key,
            "minutes": minutes,
            "node_hours": str(quote.node_hours),
            "percent": str(quote.percent),
            "computed": str(quote.amount),
            "amount": str(amount),
            "currency": credit.currency,
            "method": credit.method,
        },
    )
    return credit


def _credit_refund(credit: SlaCredit) -> SlaCredit:
    """Refund the credit to the block's card payments, the latest first."""
    reservation = credit.reservation
    settles = credit.refund_settles
    reason = _reason(credit, reservation)
    mine = Refund.objects.filter(settles=settles, status__in=[Refund.Status.PENDING])
    for pending in mine:  # written before a crash or an outage, never sent
        try:
            refund_send(pending)
        except gateway.GatewayUnavailable:
            raise
        except gateway.PaymentError as exc:
            Refund.objects.filter(pk=pending.pk, status=Refund.Status.PENDING).update(
                status=Refund.Status.FAILED, failure_message=exc.message[:300]
            )
            return _credit_fail(credit, exc.message)
    for payment in _card_payments(reservation):
        done = (
            Refund.objects.filter(
                settles=settles, status__in=[Refund.Status.PENDING, Refund.Status.SUCCEEDED]
            ).aggregate(s=Sum("amount"))["s"]
            or ZERO
        )
        left = credit.amount - done
        if left <= 0:
            break
        if payment.refunds.filter(settles=settles).exists():
            continue
        in_flight = (
            payment.refunds.filter(status=Refund.Status.PENDING).aggregate(s=Sum("amount"))["s"]
            or ZERO
        )
        share = min(left, payment.refundable - in_flight)
        if share <= 0:
            continue
        try:
            refund_issue(payment=payment, amount=share, reason=reason, actor=None, settles=settles)
        except AlreadySettled:  # a concurrent grant made it first
            continue
        except gateway.GatewayUnavailable:
            raise  # the refund stays pending: the task's retry sends it (refund_send above)
        except gateway.PaymentError as exc:
            Refund.objects.filter(
                payment=payment, settles=settles, status=Refund.Status.PENDING
            ).update(status=Refund.Status.FAILED, failure_message=exc.message[:300])
            return _credit_fail(credit, exc.message)
        except ServiceError as exc:
            # Refused before Stripe: the payment's room went meanwhile. When it went to this
            # credit (the same incident reported twice at once, both paying it), nothing is
            # lost; else another refund took it and finance must look.
            if payment.refunds.filter(settles=settles).exists():
                continue
            return _credit_fail(credit, exc.message)
    refunds = Refund.objects.filter(settles=settles)
    refunded = refunds.filter(status=Refund.Status.SUCCEEDED).aggregate(s=Sum("amount"))["s"]
    if (refunded or ZERO) == credit.amount:
        return _credit_granted(credit, note=None)
    if (
        refunds.filter(status=Refund.Status.FAILED).exists()
        or not refunds.filter(status=Refund.Status.PENDING).exists()
    ):
        return _credit_fail(
            credit,
            f"only {format_money(refunded or ZERO, credit.currency)} of "
            f"{format_money(credit.amount, credit.currency)} could be refunded",
        )
    return credit  # a refund still in flight: the settlement sweep sends it


def _credit_note(credit: SlaCredit) -> SlaCredit:
    """A Stripe credit note for the credit on the block's latest invoice (on an open invoice
    the customer owes less; on a paid one it goes to the customer's Stripe balance)."""
    invoice = credit.invoice
    assert invoice is not None, "a credit note needs an invoice"
    assert invoice.stripe_invoice_id, "a credit note needs a sent invoice"
    stripe_invoice = gateway.invoice_retrieve(invoice.stripe_invoice_id)
    if stripe_invoice.status not in CREDITABLE_INVOICE:
        # Voided or written off at Stripe before we heard: nothing is booked, finance is told,
        # and the invoice's status here follows so no later credit picks it.
        invoice_sync(stripe_invoice_id=invoice.stripe_invoice_id)
        return _credit_fail(
            credit, f"invoice {invoice.stripe_invoice_id} is {stripe_invoice.status}"
        )
    try:
        note = gateway.credit_note_create(
            invoice_id=invoice.stripe_invoice_id,
            amount_minor=to_minor(credit.amount, credit.currency),
            memo=_reason(credit, credit.reservation),
            paid=stripe_invoice.status == "paid",
            idempotency_key=f"sla_credit:{credit.public_id}",
        )
    except gateway.GatewayUnavailable:
        raise  # transient: the task retries with the same idempotency key
    except gateway.PaymentError as exc:
        return _credit_fail(credit, exc.message)
    return _credit_granted(credit, note=note.id)


@transaction.atomic
def _credit_granted(credit: SlaCredit, *, note: str | None) -> SlaCredit:
    locked = SlaCredit.objects.select_for_update().select_related("reservation").get(pk=credit.pk)
    if locked.status != SlaCredit.Status.PENDING:
        return locked
    reservation = locked.reservation
    locked.status = SlaCredit.Status.GRANTED
    locked.granted_at = timezone.now()
    locked.stripe_credit_note_id = note
    locked.save(update_fields=["status", "granted_at", "stripe_credit_note_id"])
    if note is not None:
        # Refunds book their own credit (refund_issue); a credit note is booked here, on its
        # invoice (check_books adds it to the invoice's credits, as Stripe lists it among the
        # invoice's credit notes) and marked as this credit's: the invoice's once-per-kind rule
        # and settlement's "already credited" are about a cancellation's credit, not this.
        invoice = locked.invoice
        assert invoice is not None
        LedgerEntry.objects.create(
            organization_id=locked.organization_id,
            kind=LedgerEntry.Kind.CREDIT,
            amount=-locked.amount,
            currency=locked.currency,
            reservation=reservation,
            invoice=invoice,
            sla_credit=locked,
            description=(
                f"SLA credit {locked.public_id} for {reservation.public_id} "
                f"({locked.get_cause_display()}): credit note {note} on invoice "
                f"{invoice.number or invoice.stripe_invoice_id}"
            )[:300],
        )
    audit.record(
        action="sla_credit.granted",
        actor=None,
        organization=reservation.organization,
        target=reservation,
        data={
            "credit": locked.public_id,
            "cause": locked.cause,
            "amount": str(locked.amount),
            "currency": locked.currency,
            "method": locked.method,
            "credit_note": note,
        },
    )
    billing_email_queue(
        reservation.organization,
        "sla_credit",
        credit=locked,
        reservation=reservation,
        reservation_url=reverse(
            "reservation-detail", args=[reservation.organization.slug, reservation.public_id]
        ),
    )
    return locked


def _credit_fail(credit: SlaCredit, message: str) -> SlaCredit:
    """Stripe refused: the credit is marked failed and finance is told (once)."""
    with transaction.atomic():
        updated = SlaCredit.objects.filter(pk=credit.pk, status=SlaCredit.Status.PENDING).update(
            status=SlaCredit.Status.FAILED, failure_message=message[:300]
        )
        if updated:
            audit.record(
                action="sla_credit.failed",
                actor=None,
                organization=credit.reservation.organization,
                target=credit.reservation,
                data={"credit": credit.public_id, "message": message[:300]},
            )
    flag_raise(
        FinanceFlag.Kind.RECONCILIATION,
        f"sla:{credit.public_id}",
        f"SLA credit {credit.public_id} of {format_money(credit.amount, credit.currency)} for "
        f"{credit.reservation.public_id} could not be paid back: {message}",
        organization=credit.reservation.organization,
    )
    credit.refresh_from_db()
    return credit
