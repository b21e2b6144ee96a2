"""Invoices for reservations on invoice terms: created in Stripe, booked, kept in sync."""

from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from capacity.models import Reservation
from core import audit
from core.money import from_minor, to_minor

from .. import gateway
from ..models import FinanceFlag, Invoice, LedgerEntry
from .accounts import billing_account_ensure
from .flags import flag_raise


def invoice_issue(*, reservation: Reservation) -> Invoice:
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
    account = billing_account_ensure(organization)
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
