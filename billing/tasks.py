from datetime import timedelta

from celery import shared_task
from django.db import OperationalError
from django.db.models import Q
from django.utils import timezone

from capacity.models import Reservation

from . import gateway, selectors, webhooks
from .models import LedgerEntry, Refund, WebhookEvent, WebhookProcessing
from .services import books, lapses, reconciliation, settlement, sla, usage

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
    """Safety net for settle_reservation: refunds due, invoices missing, refunds half-sent."""
    # Canceled or failed and not yet given back: card refunds short of what is due (over
    # several payments, some may be made and others not), or no credit on a sent invoice.
    owed = Reservation.objects.filter(
        Q(state=Reservation.State.CANCELED, refund_due__gt=0) | Q(state=Reservation.State.FAILED)
    )
    by_card = selectors.reservations_owed_card_refunds()
    by_invoice = (
        owed.filter(invoice__stripe_invoice_id__isnull=False)
        # An SLA credit note on the invoice is no cancellation's credit of it.
        .exclude(
            invoice__in=LedgerEntry.objects.filter(kind="credit", sla_credit__isnull=True).values(
                "invoice"
            )
        )
        .values_list("pk", flat=True)
    )
    reservations = {*by_card, *by_invoice}
    invoiced = (
        Reservation.objects.filter(
            organization__payment_terms="invoice",
            invoice__isnull=True,
            state__in=[
                Reservation.State.SCHEDULED,
                Reservation.State.PROVISIONING,
                Reservation.State.ACTIVE,
            ],
        )
        # Paid by card (before the organization moved to invoice terms, or a quote paid by
        # card): there is nothing to invoice, and settling it would do nothing again and again.
        .exclude(payments__status="succeeded")
        .values_list("pk", flat=True)
    )
    stuck = Refund.objects.filter(status=Refund.Status.PENDING).values_list(
        "payment__reservation_id", flat=True
    )
    lapsed = lapses.reservations_with_lapsed_payments()  # open PaymentIntents to cancel
    pending = sorted(set(reservations) | set(invoiced) | set(stuck) | lapsed)
    for reservation_id in pending:
        settle_reservation.delay(reservation_id=reservation_id)
    return len(pending)


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
