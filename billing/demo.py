"""The demo's invoice-terms customer for `seed_demo` and the load benchmark: Northwind AI (made
by capacity.demo) on net-30 terms, its bookings invoiced at Stripe by settlement, as any
customer's are, and one invoice paid.

Invoices need a Stripe that issues them (Stripe itself, or our localstripe wrapper); without one
Northwind stays on card terms and its bookings are confirmed without an invoice.
"""

from decimal import Decimal

from django.conf import settings

from accounts.models import Organization, User
from capacity.models import Reservation

from . import gateway
from .models import Invoice
from .services import invoices, settlement, terms

NET_DAYS = 30
# Above what Northwind's demo bookings (capacity.demo.load_bookings) cost together.
CREDIT_LIMIT = Decimal("5000000.00")
CONFIRMED = (
    Reservation.State.SCHEDULED,
    Reservation.State.PROVISIONING,
    Reservation.State.ACTIVE,
)


def invoicing_unavailable() -> str:
    """Why this Stripe cannot issue the demo's invoices now; "" when it can."""
    if not settings.STRIPE_SECRET_KEY:
        return "Stripe is not configured (no STRIPE_SECRET_KEY)"
    try:
        offered = gateway.invoicing_offered()
    except gateway.GatewayUnavailable as exc:
        return f"Stripe did not answer ({exc.message})"
    return "" if offered else "this Stripe has no invoices API"


def invoice_terms_ensure(*, organization: Organization, actor: User) -> bool:
    """Put the organization on invoice terms before it books anything (approved by `actor`, a
    sales user, through the terms service). Bookings already made on card terms stay as they
    were, so this changes nothing then. Returns whether it approved the terms now."""
    if organization.on_invoice_terms or organization.reservations.exists():
        return False
    terms.invoice_terms_approve(
        organization=organization,
        actor=actor,
        credit_limit=CREDIT_LIMIT,
        payment_days=NET_DAYS,
        reason="Demo: Northwind AI pays by invoice.",
    )
    return True


def invoices_settle(*, organization: Organization, pay: int = 1) -> dict[str, int]:
    """Settle every confirmed booking of an invoice-terms organization not invoiced yet (what the
    settlement task does after the commit; here at once, so the invoices exist when this
    returns), then, while fewer than `pay` of its invoices are paid, pay the earliest-due open
    ones outside Stripe (the customer's bank transfer) and book them as the invoice.paid
    webhook would. Safe to run again. Returns the invoices by status."""
    if not organization.on_invoice_terms:
        return {}
    invoiced = Invoice.objects.filter(stripe_invoice_id__isnull=False).values("reservation")
    waiting = (
        Reservation.objects.filter(organization=organization, state__in=CONFIRMED)
        .exclude(pk__in=invoiced)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for reservation_id in waiting:
        settlement.reservation_settle(reservation_id=reservation_id)
    issued = Invoice.objects.filter(organization=organization, stripe_invoice_id__isnull=False)
    unpaid = pay - issued.filter(status=Invoice.Status.PAID).count()
    for invoice in issued.filter(status=Invoice.Status.OPEN).order_by("due_at", "pk")[
        : max(unpaid, 0)
    ]:
        stripe_id = str(invoice.stripe_invoice_id)
        gateway.invoice_pay_out_of_band(invoice_id=stripe_id, idempotency_key=f"demo:{stripe_id}")
        invoices.invoice_sync(stripe_invoice_id=stripe_id)
    counts: dict[str, int] = {}
    for status in issued.values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts
