"""Invoices on invoice terms: one for a reservation's block and one for each extension.

The row is written first (it counts against the credit limit until it is sent), then Stripe
creates, finalizes and sends it; the ledger books its charge once it is sent. A creation that
fails is tried again by the settlement sweep, up to INVOICE_CREATE_MAX_ATTEMPTS, and then finance
is told: an invoice is never silently lost. Each invoice has its own idempotency key (the block's
reservation id, or the extension's id), so a block and its extensions are separate invoices at
Stripe, and a retry after a definite refusal gets a fresh key (Stripe keeps a refused request's
answer under its key).
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from accounts.models import User
from capacity.models import Extension, Reservation
from core import audit
from core.dates import format_datetime
from core.errors import Conflict
from core.money import format_money, from_minor, to_minor
from core.tasks import enqueue_after_commit

from .. import gateway
from ..models import FinanceFlag, Invoice, LedgerEntry
from .accounts import billing_account_ensure, billing_email_queue, require_finance_staff
from .flags import flag_raise


def max_attempts() -> int:
    return int(getattr(settings, "INVOICE_CREATE_MAX_ATTEMPTS", 5))


def block_invoice(reservation: Reservation) -> Invoice | None:
    return Invoice.objects.filter(reservation=reservation, extension__isnull=True).first()


def block_amount(reservation: Reservation) -> Decimal:
    """The block's own hours: its total less the extensions applied on their own money."""
    extra = sum(
        reservation.extensions.filter(state=Extension.State.PAID).values_list("price", flat=True),
        Decimal("0.00"),
    )
    return reservation.total - extra


def invoice_issue(*, reservation: Reservation, waived: Decimal = Decimal("0.00")) -> Invoice | None:
    """The block's net-N invoice (one per reservation) for its own hours less `waived` (the
    refund of a block canceled before it went out); sent now when it was not. Raises the
    gateway's errors after counting the try."""
    full = block_amount(reservation)
    amount = full - waived
    invoice = block_invoice(reservation)
    if invoice is None:
        invoice, _ = Invoice.objects.get_or_create(
            reservation=reservation,
            extension=None,
            defaults={
                "organization": reservation.organization,
                "amount": amount,
                "waived": waived,
                "currency": reservation.currency,
            },
        )
    elif not invoice.stripe_invoice_id and invoice.waived != waived:
        # Not sent yet and the block was canceled meanwhile: it bills what is kept.
        Invoice.objects.filter(pk=invoice.pk, stripe_invoice_id__isnull=True).update(
            amount=amount, waived=waived
        )
        invoice.refresh_from_db()
    if invoice.amount <= 0:
        invoice_abandon(invoice=invoice, reason="Refunded in full before it was sent.")
        return None
    return invoice_send(invoice)


def extension_invoice_open(*, extension: Extension) -> Invoice:
    """The pending invoice row for an extension on invoice terms (sent by `invoice_send`).
    Written in the transaction that checked the credit limit, so it counts against it."""
    invoice, _ = Invoice.objects.get_or_create(
        extension=extension,
        defaults={
            "organization": extension.reservation.organization,
            "reservation": extension.reservation,
            "amount": extension.price,
            "currency": extension.currency,
        },
    )
    return invoice


def _description(invoice: Invoice, reservation: Reservation, extension: Extension | None) -> str:
    block = f"{reservation.node_count} × {reservation.gpu_model.name}"
    if extension is not None:
        return (
            f"Hyperblock reservation {reservation.public_id}, extension {extension.public_id}: "
            f"{block}, {format_datetime(extension.starts_at)}, {extension.hours} h more"
        )
    return (
        f"Hyperblock reservation {reservation.public_id}: {block}, "
        f"{format_datetime(reservation.starts_at)}, {reservation.duration_hours} h"
    )


def _key(invoice: Invoice, reservation: Reservation, extension: Extension | None) -> str:
    base = f"invoice:{extension.public_id if extension else reservation.public_id}"
    return base if not invoice.key_version else f"{base}:v{invoice.key_version}"


def invoice_send(invoice: Invoice) -> Invoice:
    """Create, finalize and send `invoice` at Stripe and book its charge, once. A failure is
    counted (and told to finance after the last try) and raised again."""
    if invoice.stripe_invoice_id or invoice.status != Invoice.Status.PENDING:
        return invoice
    reservation = Reservation.objects.select_related("organization", "gpu_model").get(
        pk=invoice.reservation_id
    )
    extension = Extension.objects.get(pk=invoice.extension_id) if invoice.extension_id else None
    organization = reservation.organization
    description = _description(invoice, reservation, extension)
    metadata = {"reservation": reservation.public_id, "organization": organization.slug}
    if extension is not None:
        metadata["extension"] = extension.public_id
    try:
        account = billing_account_ensure(organization)
        stripe_invoice = gateway.invoice_create(
            customer_id=account.stripe_customer_id,
            amount_minor=to_minor(invoice.amount, invoice.currency),
            currency=invoice.currency,
            description=description,
            days_until_due=organization.payment_days,
            metadata=metadata,
            idempotency_key=_key(invoice, reservation, extension),
        )
    except gateway.PaymentError as exc:
        _failed(invoice, exc)
        raise
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
        what = (
            f"extension {extension.public_id} of {reservation.public_id} ({extension.hours} h)"
            if extension is not None
            else reservation.public_id
        )
        LedgerEntry.objects.create(
            organization=organization,
            kind=LedgerEntry.Kind.CHARGE,
            amount=invoice.amount,
            currency=invoice.currency,
            reservation=reservation,
            invoice=invoice,
            description=f"Invoice {invoice.number or invoice.stripe_invoice_id} for {what}",
        )
        audit.record(
            action="invoice.created",
            actor=None,
            organization=organization,
            target=invoice,
            data={
                "amount": str(invoice.amount),
                "due": invoice.due_at.isoformat() if invoice.due_at else None,
                "reservation": reservation.public_id,
                "extension": extension.public_id if extension is not None else None,
            },
        )
    return invoice


def _failed(invoice: Invoice, exc: gateway.PaymentError) -> None:
    """Count a failed try; a definite refusal (not an outage) makes the next try use a new key."""
    message = exc.message[:300]
    changes: dict[str, object] = {"attempts": F("attempts") + 1, "last_error": message}
    if not isinstance(exc, gateway.GatewayUnavailable):
        changes["key_version"] = F("key_version") + 1
    Invoice.objects.filter(pk=invoice.pk).update(**changes)
    invoice.refresh_from_db()
    audit.record(
        action="invoice.create_failed",
        actor=None,
        organization=invoice.organization,
        target=invoice,
        data={"attempt": invoice.attempts, "error": message},
    )
    if invoice.attempts >= max_attempts():
        flag_raise(
            FinanceFlag.Kind.INVOICE_NOT_SENT,
            f"invoice:{invoice.pk}",
            f"Invoice {invoice.pk} ({format_money(invoice.amount, invoice.currency)}) for "
            f"{invoice.reservation.public_id} could not be created at Stripe after "
            f"{invoice.attempts} tries: {message} Fix the cause and send it again (the "
            "invoice's 'Send again' action), then resolve this flag.",
            organization=invoice.organization,
        )


RETRY_PERMISSION = "billing.resolve_financeflag"


@transaction.atomic
def invoice_retry(*, invoice: Invoice, actor: User) -> Invoice:
    """Finance sends again an invoice whose creation failed for good (after the cause was
    fixed): its tries start over and settlement sends it after the commit, as the first time."""
    require_finance_staff(actor, RETRY_PERMISSION, "Only finance staff can send an invoice again.")
    locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if locked.stripe_invoice_id or locked.status != Invoice.Status.PENDING:
        raise Conflict(
            f"Invoice {locked} is {locked.get_status_display().lower()}"
            + (f" ({locked.stripe_invoice_id})" if locked.stripe_invoice_id else "")
            + ": there is nothing to send again.",
            code="not_pending",
        )
    before = locked.attempts
    locked.attempts = 0
    locked.save(update_fields=["attempts"])
    audit.record(
        action="invoice.retried",
        actor=actor,
        organization=locked.organization,
        target=locked,
        data={"attempts_before": before, "last_error": locked.last_error},
    )
    enqueue_after_commit("billing.settle_reservation", reservation_id=locked.reservation_id)
    return locked


def invoice_abandon(*, invoice: Invoice, reason: str) -> bool:
    """An invoice that never went out and is not wanted any more (its extension lapsed or was
    canceled before Stripe created it): void here, nothing booked. False when it was sent."""
    with transaction.atomic():
        done = Invoice.objects.filter(
            pk=invoice.pk, stripe_invoice_id__isnull=True, status=Invoice.Status.PENDING
        ).update(status=Invoice.Status.VOID)
        if done:
            audit.record(
                action="invoice.abandoned",
                actor=None,
                organization=invoice.organization,
                target=invoice,
                data={"amount": str(invoice.amount)},
                reason=reason,
            )
    return bool(done)


# What Stripe lets a credit reach the customer on: an open invoice owes less, a paid one
# credits the customer's balance. A void one is owed nothing; an uncollectible one was
# written off (finance's to settle).
CREDITABLE_AT_STRIPE = ("open", "paid")


def invoice_credit(
    *, invoice: Invoice, amount: Decimal, reason: str, reservation: Reservation, notify: bool = True
) -> Decimal:
    """Credit `amount` on a sent invoice, once: void it when it is open and credited in full,
    else a Stripe credit note (on a paid one, to the customer's balance). The ledger books the
    credit once per invoice, only after Stripe took it. Returns what was credited: 0 when it
    already was, when Stripe refused (finance is told), or when the invoice is neither open
    nor paid at Stripe (void, uncollectible: nothing is booked and its status here follows
    Stripe's, so the caller can put the credit elsewhere)."""
    if not invoice.stripe_invoice_id or amount <= 0:
        return Decimal("0.00")
    credits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT, invoice=invoice)
    if credits.filter(sla_credit__isnull=True).exists():
        return Decimal("0.00")
    # SLA credit notes already lowered what the invoice can still be credited.
    sla_credited = -(credits.aggregate(s=Sum("amount"))["s"] or Decimal("0.00"))
    room = invoice.amount - sla_credited
    credit = min(amount, room)
    if credit <= 0:
        return Decimal("0.00")
    stripe_invoice = gateway.invoice_retrieve(invoice.stripe_invoice_id)
    if stripe_invoice.status not in CREDITABLE_AT_STRIPE:
        # Voided or written off at Stripe (finance, the dashboard) and perhaps not heard of
        # yet: a credit booked here would be one the customer never gets.
        invoice_sync(stripe_invoice_id=invoice.stripe_invoice_id)
        invoice.refresh_from_db()
        return Decimal("0.00")
    key = f"credit:{invoice.stripe_invoice_id}"
    # Voided only when nothing else was credited on it: a credit note is left in place.
    voided = stripe_invoice.status == "open" and credit == invoice.amount
    try:
        if voided:
            gateway.invoice_void(invoice_id=invoice.stripe_invoice_id, idempotency_key=key)
        else:
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
        return Decimal("0.00")
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if LedgerEntry.objects.filter(
            kind=LedgerEntry.Kind.CREDIT, invoice=locked, sla_credit__isnull=True
        ).exists():
            return Decimal("0.00")
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
    if notify:
        billing_email_queue(
            reservation.organization, "invoice_credited", invoice=locked, credit=credit,
            reservation=reservation, voided=voided,
        )  # fmt: skip
    return credit


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
            and invoice.status != Invoice.Status.PAID
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


def invoice_failure_record(*, stripe_invoice_id: str) -> None:
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


def invoice_uncollectible_record(*, stripe_invoice_id: str) -> None:
    """`invoice.marked_uncollectible`: Stripe gave up collecting it. The status follows (the
    amount stays owed in the ledger: it was sold), finance is told once, and the organization
    takes no new reservations until finance resolves the flag (billing.selectors)."""
    invoice = invoice_sync(stripe_invoice_id=stripe_invoice_id)
    if invoice is None or invoice.status != Invoice.Status.UNCOLLECTIBLE:
        return
    flag_raise(
        FinanceFlag.Kind.INVOICE_UNCOLLECTIBLE,
        stripe_invoice_id,
        f"Invoice {invoice.number or stripe_invoice_id} "
        f"({format_money(invoice.amount, invoice.currency)}) was marked uncollectible; "
        f"{invoice.organization.name} takes no new reservations until this is resolved.",
        organization=invoice.organization,
    )
