"""Overdue invoices: reminders e-mailed at INVOICE_REMINDER_DAYS past the due date, each once.

Refusing new reservations once an invoice is INVOICE_REFUSE_AFTER_DAYS overdue needs no job:
capacity asks `selectors.reservations_refused_for_org` (RESERVATIONS_REFUSED_HOOK) each time.
"""

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core import audit

from ..models import Invoice, InvoiceReminder
from .accounts import billing_email_queue


def reminder_days() -> tuple[int, ...]:
    return tuple(sorted(int(d) for d in getattr(settings, "INVOICE_REMINDER_DAYS", (1, 7))))


def invoice_reminders_send() -> int:
    """E-mail the reminders due now; returns how many. Each (invoice, step) is recorded in the
    same transaction as the queued e-mail, so a second run (or two at once) sends nothing more.
    A step missed (the task did not run that day) is sent late, but only the latest one due."""
    now = timezone.now()
    days = reminder_days()
    if not days:
        return 0
    sent = 0
    overdue = Invoice.objects.filter(
        status=Invoice.Status.OPEN, due_at__lte=now - timedelta(days=days[0])
    ).select_related("organization", "reservation")
    for invoice in overdue.order_by("due_at", "pk"):
        late = (now - invoice.due_at).days if invoice.due_at else 0
        due_steps = [d for d in days if d <= late]
        if not due_steps:
            continue
        step = due_steps[-1]
        if invoice.reminders.filter(days_overdue__gte=step).exists():
            continue
        try:
            with transaction.atomic():
                InvoiceReminder.objects.create(invoice=invoice, days_overdue=step, sent_at=now)
                audit.record(
                    action="invoice.reminded",
                    actor=None,
                    organization=invoice.organization,
                    target=invoice,
                    data={"days_overdue": step, "late": late},
                )
                billing_email_queue(
                    invoice.organization,
                    "invoice_overdue",
                    invoice=invoice,
                    late=late,
                    refuse_after=int(getattr(settings, "INVOICE_REFUSE_AFTER_DAYS", 14)),
                )
        except IntegrityError:  # another run sent it a moment ago
            continue
        sent += 1
    return sent
