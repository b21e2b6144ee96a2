from datetime import date, datetime
from decimal import Decimal
from typing import TypedDict

from django.db.models import Count, Exists, F, Min, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from accounts.models import Organization
from capacity.models import Reservation

from .models import (
    Invoice,
    LedgerEntry,
    Payment,
    Refund,
    UsageEvent,
    UsageHour,
    WebhookEvent,
    WebhookProcessing,
)


class DaySpend(TypedDict):
    """Tokens and cost of one model on one day."""

    hour__date: date
    model: str
    input_tokens: int
    output_tokens: int
    cost: Decimal


class KeyUsage(TypedDict):
    """Tokens of one model through one API key."""

    api_key__name: str
    api_key__public_id: str
    model: str
    input_tokens: int
    output_tokens: int


def payments_for_org(organization: Organization) -> QuerySet[Payment]:
    return Payment.objects.filter(organization=organization).select_related(
        "reservation", "extension"
    )


def payment_for_org(organization: Organization, public_id: str) -> Payment | None:
    return payments_for_org(organization).filter(public_id=public_id).first()


def refunds_for_org(organization: Organization) -> QuerySet[Refund]:
    return Refund.objects.filter(payment__organization=organization).select_related("payment")


def invoices_for_org(organization: Organization) -> QuerySet[Invoice]:
    return Invoice.objects.filter(organization=organization).select_related("reservation")


def ledger_for_org(organization: Organization) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(organization=organization)


def balance_for_org(organization: Organization) -> Decimal:
    """What the organization owes now: the sum of its ledger."""
    total = ledger_for_org(organization).aggregate(total=Sum("amount"))["total"]
    return total or Decimal("0.00")


def credit_used_for_org(organization: Organization) -> Decimal:
    """Credit in use on invoice terms: what is owed now, plus reservations confirmed whose
    invoice has not been sent yet (their charge is booked when it is)."""
    S = Reservation.State
    committed = (
        Reservation.objects.filter(
            organization=organization,
            state__in=[S.SCHEDULED, S.PROVISIONING, S.ACTIVE, S.RELEASING, S.COMPLETED],
        )
        .exclude(invoice__stripe_invoice_id__isnull=False)
        .exclude(payments__status="succeeded")
        .aggregate(total=Sum("total"))["total"]
    )
    return balance_for_org(organization) + (committed or Decimal("0.00"))


def _sum(queryset: QuerySet, field: str) -> Decimal:
    total: Decimal = queryset.aggregate(s=Coalesce(Sum(field), Decimal("0.00")))["s"]
    return total


def settled_for_reservation(reservation: Reservation) -> Decimal:
    """RESERVATION_SETTLED_HOOK: the money a reservation holds now, which a cancellation's
    policy percent applies to and a failure gives back in full (never its list total).

    By card: its successful payments (the block's and each paid extension's) less what was
    refunded and what is being refunded. A payment flagged for finance (a dispute, an amount
    that did not match) is left out, as settlement never refunds it on its own. On invoice
    terms: its invoices that are not void, less the credits booked on them. A reservation
    confirmed on invoice terms whose invoice is not made yet (settlement runs after the commit)
    is committed for its total, as `credit_used_for_org` counts it."""
    paid = Payment.objects.filter(
        reservation=reservation, status=Payment.Status.SUCCEEDED, flagged=False
    )
    zero = Decimal("0.00")
    cards = paid.aggregate(
        paid=Coalesce(Sum("amount"), zero), refunded=Coalesce(Sum("amount_refunded"), zero)
    )
    pending = _sum(Refund.objects.filter(payment__in=paid, status=Refund.Status.PENDING), "amount")
    by_card = cards["paid"] - cards["refunded"] - pending
    invoices = Invoice.objects.filter(reservation=reservation)
    billed = invoices.exclude(status=Invoice.Status.VOID)
    credits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT, invoice__in=billed)
    by_invoice = _sum(billed, "amount") + _sum(credits, "amount")  # credits are negative
    S = Reservation.State
    if (
        reservation.organization.on_invoice_terms
        and reservation.state in (S.SCHEDULED, S.PROVISIONING, S.ACTIVE)
        and not invoices.exists()
        and not reservation.payments.filter(status=Payment.Status.SUCCEEDED).exists()
    ):
        by_invoice = reservation.total
    return (by_card + by_invoice).quantize(Decimal("0.01"))


def reservations_owed_card_refunds() -> set[int]:
    """Ids of canceled or failed reservations whose card refunds are not all made: a payment
    with money left and no settling refund yet, and for a cancellation, settling refunds short
    of `refund_due`. A cancellation refunded over several payments that was cut short after
    the first is found here until the last is made (refunds written but never sent are the
    sweep's other query). A try Stripe failed is not a refund made, so the sweep tries again;
    one settlement gave up on (`Refund.refused`, finance flagged) counts as done."""
    S = Reservation.State

    def settled(settles: str) -> Exists:
        return Exists(done.filter(payment=OuterRef("pk"), settles=settles))

    open_payments = Payment.objects.filter(
        reservation=OuterRef("pk"),
        status=Payment.Status.SUCCEEDED,
        flagged=False,
        amount__gt=F("amount_refunded"),
    )
    # A try Stripe failed is not given; one settlement gave up on (finance was flagged) is
    # done with, so the sweep does not enqueue it again and again.
    done = Refund.objects.exclude(status=Refund.Status.FAILED, refused=False)
    given = (
        done.filter(payment__reservation=OuterRef("pk"), settles=Refund.Settles.CANCELLATION)
        .order_by()
        .values("payment__reservation")
        .annotate(s=Sum("amount"))
        .values("s")
    )
    canceled = (
        Reservation.objects.filter(state=S.CANCELED, refund_due__gt=0)
        .annotate(given=Coalesce(Subquery(given), Decimal("0.00")))
        .filter(given__lt=F("refund_due"))
        .filter(Exists(open_payments.exclude(settled(Refund.Settles.CANCELLATION))))
    )
    failed = Reservation.objects.filter(state=S.FAILED).filter(
        Exists(open_payments.exclude(settled(Refund.Settles.FAILURE)))
    )
    return {*canceled.values_list("pk", flat=True), *failed.values_list("pk", flat=True)}


def spend_for_org(organization: Organization, since: datetime) -> Decimal:
    """Charges net of credits since a moment: what the organization was billed."""
    kinds = [LedgerEntry.Kind.CHARGE, LedgerEntry.Kind.CREDIT, LedgerEntry.Kind.USAGE]
    total = (
        ledger_for_org(organization)
        .filter(kind__in=kinds, created_at__gte=since)
        .aggregate(total=Sum("amount"))["total"]
    )
    return total or Decimal("0.00")


def webhook_backlog() -> tuple[int, datetime | None]:
    """Stripe events not yet processed (never picked up, pending or failed) and when the oldest
    of them arrived."""
    done = [WebhookProcessing.Status.PROCESSED, WebhookProcessing.Status.IGNORED]
    row = WebhookEvent.objects.filter(
        Q(processing__isnull=True) | ~Q(processing__status__in=done)
    ).aggregate(n=Count("id"), oldest=Min("received_at"))
    return row["n"], row["oldest"]


def usage_by_day_for_org(organization: Organization, since: datetime) -> list[DaySpend]:
    return list(
        UsageHour.objects.filter(organization=organization, hour__gte=since)
        .values("hour__date", "model")
        .annotate(
            input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), cost=Sum("cost")
        )
        .order_by("hour__date", "model")
    )


def usage_by_key_for_org(organization: Organization, since: datetime) -> list[KeyUsage]:
    return list(
        UsageEvent.objects.filter(organization=organization, occurred_at__gte=since)
        .values("api_key__name", "api_key__public_id", "model")
        .annotate(input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"))
        .order_by("api_key__name", "model")
    )
