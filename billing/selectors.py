from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TypedDict

from django.conf import settings
from django.db.models import Count, Exists, F, Min, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Organization
from capacity.models import Extension, Reservation
from core.money import format_money

from .models import (
    FinanceFlag,
    Invoice,
    LedgerEntry,
    ModelPrice,
    Payment,
    Refund,
    SlaCredit,
    UsageEvent,
    UsageHour,
    WebhookEvent,
    WebhookProcessing,
)


def model_prices() -> QuerySet[ModelPrice]:
    """The public token prices of the hosted models, by name."""
    return ModelPrice.objects.order_by("model")


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
    return Invoice.objects.filter(organization=organization).select_related(
        "reservation", "extension"
    )


def ledger_for_org(organization: Organization) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(organization=organization)


def balance_for_org(organization: Organization) -> Decimal:
    """What the organization owes now: the sum of its ledger."""
    total = ledger_for_org(organization).aggregate(total=Sum("amount"))["total"]
    return total or Decimal("0.00")


def credit_used_for_org(organization: Organization) -> Decimal:
    """Credit in use on invoice terms: what is owed now, plus what is sold on credit and not
    invoiced yet (its charge is booked when the invoice is sent): confirmed blocks whose own
    invoice has not gone out, and extensions held for an invoice not sent yet."""
    S = Reservation.State
    sent_blocks = Invoice.objects.filter(
        extension__isnull=True, stripe_invoice_id__isnull=False
    ).values("reservation")
    card_paid = Payment.objects.filter(status="succeeded", extension__isnull=True)
    unsent = (
        Reservation.objects.filter(
            organization=organization,
            state__in=[S.SCHEDULED, S.PROVISIONING, S.ACTIVE, S.RELEASING, S.COMPLETED],
        )
        .exclude(pk__in=sent_blocks)
        .exclude(pk__in=card_paid.values("reservation"))
    )
    committed = unsent.aggregate(total=Sum("total"))["total"] or Decimal("0.00")
    # Extensions applied on their own money (invoice or card) are in the total but not owed
    # through the block's invoice.
    applied = Extension.objects.filter(reservation__in=unsent, state=Extension.State.PAID)
    committed -= applied.aggregate(total=Sum("price"))["total"] or Decimal("0.00")
    held = Invoice.objects.filter(
        organization=organization,
        extension__state=Extension.State.HELD,
        status=Invoice.Status.PENDING,
        stripe_invoice_id__isnull=True,
    ).aggregate(total=Sum("amount"))["total"] or Decimal("0.00")
    return balance_for_org(organization) + committed + held


def overdue_invoices_for_org(organization: Organization, days: int) -> QuerySet[Invoice]:
    """Open invoices more than `days` days past their due date."""
    return Invoice.objects.filter(
        organization=organization,
        status=Invoice.Status.OPEN,
        due_at__lt=timezone.now() - timedelta(days=days),
    ).order_by("due_at", "pk")


def reservations_refused_for_org(organization: Organization) -> str | None:
    """RESERVATIONS_REFUSED_HOOK: why the organization may not reserve more now, or None. An
    invoice more than INVOICE_REFUSE_AFTER_DAYS overdue (until it is paid), and an invoice
    written off as uncollectible or a dispute lost (until finance resolves the flag)."""
    days = int(getattr(settings, "INVOICE_REFUSE_AFTER_DAYS", 14))
    overdue = overdue_invoices_for_org(organization, days).first()
    if overdue is not None:
        late = (timezone.now() - overdue.due_at).days if overdue.due_at else days
        return (
            f"Invoice {overdue.number or overdue.stripe_invoice_id} "
            f"({format_money(overdue.amount, overdue.currency)}) is {late} days overdue, so new "
            "reservations are paused. Pay it and you can reserve again at once."
        )
    flag = (
        FinanceFlag.objects.filter(
            organization=organization,
            resolved_at__isnull=True,
            kind__in=[FinanceFlag.Kind.INVOICE_UNCOLLECTIBLE, FinanceFlag.Kind.DISPUTE_LOST],
        )
        .order_by("created_at", "pk")
        .first()
    )
    if flag is None:
        return None
    why = (
        "a payment was disputed and the dispute was lost"
        if flag.kind == FinanceFlag.Kind.DISPUTE_LOST
        else "an invoice was written off as uncollectible"
    )
    return (
        f"New reservations are paused for {organization.name}: {why}. Contact your account "
        "manager or billing support to settle it."
    )


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
    # An extension's invoice is part of what was sold once the extension was applied; one
    # withdrawn before that (its hours given back) is not.
    billed = invoices.exclude(status=Invoice.Status.VOID).filter(
        Q(extension__isnull=True) | Q(extension__state=Extension.State.PAID)
    )
    credits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT, invoice__in=billed)
    by_invoice = _sum(billed, "amount") + _sum(credits, "amount")  # credits are negative
    S = Reservation.State
    if (
        reservation.organization.on_invoice_terms
        and reservation.state in (S.SCHEDULED, S.PROVISIONING, S.ACTIVE)
        and not invoices.filter(extension__isnull=True).exists()
        and not reservation.payments.filter(
            status=Payment.Status.SUCCEEDED, extension__isnull=True
        ).exists()
    ):
        # The block's invoice is not made yet: its own hours (the total less the extensions
        # applied on their own money) are committed all the same.
        applied = reservation.extensions.filter(state=Extension.State.PAID)
        by_invoice += reservation.total - _sum(applied, "price")
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


class SlaCreditRow(TypedDict):
    id: str
    cause: str
    amount: Decimal
    currency: str
    status: str
    granted_at: datetime | None


def sla_credits_for_reservation(reservation: Reservation) -> list[SlaCreditRow]:
    """RESERVATION_SLA_CREDITS_HOOK: a reservation's SLA credits, the oldest first, as its API
    document shows them (capacity names no billing model)."""
    rows = (
        SlaCredit.objects.filter(reservation=reservation)
        .order_by("created_at", "pk")
        .values("public_id", "cause", "amount", "currency", "status", "granted_at")
    )
    return [
        SlaCreditRow(
            id=row["public_id"],
            cause=row["cause"],
            amount=row["amount"],
            currency=row["currency"],
            status=row["status"],
            granted_at=row["granted_at"],
        )
        for row in rows
    ]
