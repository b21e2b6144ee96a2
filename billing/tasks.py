from datetime import timedelta

from celery import shared_task
from django.db import OperationalError
from django.db.models import F, Q
from django.utils import timezone

from capacity.models import Reservation

from . import gateway, selectors, webhooks
from .models import Invoice, LedgerEntry, Payment, Refund, WebhookEvent, WebhookProcessing
from .services import books, invoices, lapses, overdue, reconciliation, settlement, sla, usage

# Stripe out of reach, or the database refusing for now (a deadlock broken by PostgreSQL, a lock
# wait timed out, a dropped connection): worth trying again in a moment.
TRANSIENT = (gateway.GatewayUnavailable, OperationalError)


@shared_task(
    name="billing.process_webhook_event",
    autoretry_for=TRANSIENT,
    retry_backoff=5,
    retry_backoff_max=600,
    max_retries=10,
)
def process_webhook_event(*, event_id: int) -> str:
    return webhooks.webhook_process(event_id)


@shared_task(
    name="billing.settle_reservation", autoretry_for=TRANSIENT, retry_backoff=5, max_retries=10
)
def settle_reservation(*, reservation_id: int) -> None:
    settlement.reservation_settle(reservation_id=reservation_id)


@shared_task(
    name="billing.grant_sla_credit", autoretry_for=TRANSIENT, retry_backoff=5, max_retries=10
)
def grant_sla_credit(*, reservation_id: int, cause: str, key: str, minutes: int) -> str | None:
    """An SLA credit capacity measured (SLA_CREDIT_HOOK); once per (reservation, cause, key)."""
    credit = sla.sla_credit_grant(
        reservation_id=reservation_id, cause=cause, key=key, minutes=minutes
    )
    return credit.public_id if credit else None


@shared_task(name="billing.sweep_sla_credits")
def sweep_sla_credits() -> int:
    """Safety net for grant_sla_credit: pending credits resumed, and the shortfalls of blocks
    that ended lately granted where no credit was asked for (sla.sla_credits_due)."""
    due = sla.sla_credits_due()
    for item in due:
        grant_sla_credit.delay(
            reservation_id=item.reservation_id, cause=item.cause, key=item.key, minutes=item.minutes
        )
    return len(due)


@shared_task(name="billing.settle_pending")
def settle_pending() -> int:
    """Safety net for settle_reservation: refunds due, invoices missing or not sent (tried again
    up to INVOICE_CREATE_MAX_ATTEMPTS, then finance is told), refunds half-sent."""
    S = Reservation.State
    tries = invoices.max_attempts()
    # Canceled or failed and not yet given back: card refunds short of what is due (over
    # several payments, some may be made and others not), or no credit on a sent invoice.
    owed = Reservation.objects.filter(Q(state=S.CANCELED, refund_due__gt=0) | Q(state=S.FAILED))
    by_card = selectors.reservations_owed_card_refunds()
    # A failed block credits every sent invoice; a canceled one credits the latest first up to
    # its refund, so one credit on any of its invoices means it was settled.
    # (An SLA credit note on an invoice is no cancellation's credit of it.)
    credited = LedgerEntry.objects.filter(
        kind="credit", invoice__isnull=False, sla_credit__isnull=True
    )
    # A void or uncollectible invoice takes no credit (settlement passes it over).
    uncredited = Invoice.objects.filter(
        stripe_invoice_id__isnull=False, status__in=["open", "paid"]
    ).exclude(pk__in=credited.values("invoice"))
    # A block canceled before its invoice went out was invoiced less its refund instead.
    reduced = Invoice.objects.filter(
        extension__isnull=True,
        stripe_invoice_id__isnull=False,
        waived__gte=F("reservation__refund_due"),
    )
    by_invoice = (
        owed.filter(pk__in=uncredited.values("reservation"))
        .exclude(state=S.CANCELED, pk__in=credited.values("reservation"))
        .exclude(state=S.CANCELED, pk__in=reduced.values("reservation"))
        .values_list("pk", flat=True)
    )
    # A block's own invoice that is missing, or was written and never reached Stripe: confirmed
    # on invoice terms, or canceled (what it keeps of the price is invoiced). Blocks paid by
    # card (before the move to invoice terms, a quote paid by card) have nothing to invoice.
    done = Invoice.objects.filter(extension__isnull=True).filter(
        Q(stripe_invoice_id__isnull=False) | Q(attempts__gte=tries) | ~Q(status="pending")
    )
    invoiced = (
        Reservation.objects.filter(organization__payment_terms="invoice")
        .filter(
            Q(state__in=[S.SCHEDULED, S.PROVISIONING, S.ACTIVE])
            # Canceled with less than all of it refunded: the rest is invoiced.
            | Q(state=S.CANCELED, refund_due__isnull=False, refund_due__lt=F("total"))
        )
        .exclude(pk__in=done.values("reservation"))
        .exclude(
            pk__in=Payment.objects.filter(status="succeeded", extension__isnull=True).values(
                "reservation"
            )
        )
        .values_list("pk", flat=True)
    )
    # An extension's invoice not sent yet: sent and applied while its hold lasts, else dropped.
    extensions = (
        Invoice.objects.filter(
            extension__isnull=False, status="pending", stripe_invoice_id__isnull=True
        )
        .exclude(attempts__gte=tries, extension__state="held")  # finance's, until the hold ends
        .values_list("reservation_id", flat=True)
    )
    stuck = Refund.objects.filter(status=Refund.Status.PENDING).values_list(
        "payment__reservation_id", flat=True
    )
    lapsed = lapses.reservations_with_lapsed_payments()  # open PaymentIntents to cancel
    pending = sorted({*by_card, *by_invoice, *invoiced, *extensions, *stuck, *lapsed})
    for reservation_id in pending:
        settle_reservation.delay(reservation_id=reservation_id)
    return len(pending)


@shared_task(name="billing.remind_overdue_invoices")
def remind_overdue_invoices() -> int:
    """Daily: e-mail each overdue invoice's reminders (INVOICE_REMINDER_DAYS), each once."""
    return overdue.invoice_reminders_send()


@shared_task(name="billing.retry_webhooks")
def retry_webhooks() -> int:
    """Re-enqueue events whose processing never started or never finished (a worker died, the
    broker was down when the event arrived)."""
    stale = timezone.now() - timedelta(minutes=2)
    never_started = WebhookEvent.objects.filter(
        received_at__lt=stale, processing__isnull=True
    ).values_list("pk", flat=True)
    unfinished = WebhookProcessing.objects.filter(
        status__in=[WebhookProcessing.Status.PENDING, WebhookProcessing.Status.FAILED],
        updated_at__lt=stale,
        attempts__lt=10,
    ).values_list("event_id", flat=True)
    events = sorted({*never_started, *unfinished})
    for event_id in events:
        process_webhook_event.delay(event_id=event_id)
    return len(events)


@shared_task(name="billing.reconcile", autoretry_for=TRANSIENT, retry_backoff=60, max_retries=5)
def reconcile() -> int:
    return reconciliation.payments_reconcile()


@shared_task(
    name="billing.check_books",
    autoretry_for=TRANSIENT,
    retry_backoff=60,
    max_retries=5,
    soft_time_limit=30 * 60,  # reads every customer's charges: longer than the global limit
    time_limit=35 * 60,
)
def check_books() -> int:
    """Daily: the ledger against Stripe; each difference becomes a finance flag once."""
    return len(books.books_check().differences)


@shared_task(name="billing.aggregate_usage")
def aggregate_usage() -> int:
    """Hourly: book the last hours' token usage and report it to Stripe; safe to run twice."""
    return usage.usage_aggregate()
