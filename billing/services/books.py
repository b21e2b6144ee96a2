"""The books check: the ledger against what Stripe itself holds, per organization, to the cent.

Stripe's side is read from Stripe (the customer's charges, their refunds, invoices and credit
notes where this Stripe has them), never from our payment rows: those are only used to know
which PaymentIntent a ledger entry belongs to. Three things are compared:

- per PaymentIntent, what the ledger booked as paid and refunded against what Stripe captured
  and refunded (a refund Stripe made that the ledger lacks is named by its Stripe id);
- per invoice, when Stripe offers invoices: its total, what was paid and what was credited
  (a cancellation's credit and the SLA credit notes on it: every credit row naming it);
- per reservation, inside the ledger (which the first two tie to Stripe): the money settled
  equals what it was sold for minus its refunds and credits, and a confirmed block was charged
  its price.

Each difference is told to finance once (a flag per object) however often the check runs. Money
that moved in the last `grace` is left for the next run: a payment Stripe took a second ago may
not be booked yet, and a flag raised on it would be noise.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Max, Q, Sum
from django.utils import timezone

from accounts.models import Organization
from capacity.models import Reservation
from core.money import format_money, from_minor

from .. import gateway
from ..models import BillingAccount, FinanceFlag, Invoice, LedgerEntry, Refund
from .books_report import BooksReport, count_noun
from .flags import flag_raise

K = LedgerEntry.Kind
S = Reservation.State
ZERO = Decimal("0.00")
# The states in which a block has been sold and must have been charged its price.
SOLD = (S.SCHEDULED, S.PROVISIONING, S.ACTIVE, S.RELEASING, S.COMPLETED)
REFUND_GONE = ("failed", "canceled")  # a Stripe refund in these states gave nothing back


@dataclass
class _Money:
    """What one PaymentIntent took and gave back, on one side of the comparison."""

    took: Decimal = ZERO
    gave_back: Decimal = ZERO
    currency: str = ""
    latest: datetime | None = None
    payment: str = ""  # our payment's public id, when the ledger knows the intent

    def saw(self, when: datetime | None) -> None:
        if when is not None and (self.latest is None or when > self.latest):
            self.latest = when


def books_check(*, grace: timedelta | None = None, raise_flags: bool = True) -> BooksReport:
    """Compare every organization's ledger with Stripe; with `raise_flags`, tell finance about
    each difference (once per object: a second run raises nothing new). Reads Stripe, writes
    nothing but flags."""
    if grace is None:
        grace = timedelta(seconds=settings.BOOKS_CHECK_GRACE_SECONDS)
    as_of = timezone.now() - grace
    report = BooksReport()
    invoicing = None  # asked of Stripe the first time an invoice needs it
    organizations = Organization.objects.filter(
        pk__in=LedgerEntry.objects.values("organization")
    ) | Organization.objects.filter(pk__in=BillingAccount.objects.values("organization"))
    for organization in organizations.distinct().order_by("slug"):
        report.organizations += 1
        account = BillingAccount.objects.filter(organization=organization).first()
        invoices = list(Invoice.objects.filter(organization=organization).order_by("pk"))
        paid_invoices: set[str] = set()  # PaymentIntents and charges that paid an invoice
        if invoices:
            if invoicing is None:
                invoicing = gateway.invoicing_offered()
            paid_invoices = _check_invoices(
                organization, account, invoices, invoicing, as_of, report
            )
        _check_payments(organization, account, paid_invoices, as_of, report)
        _check_reservations(organization, as_of, report)
    if LedgerEntry.objects.filter(kind=K.USAGE).exists():
        report.unchecked.append(
            "token usage (ledger kind usage) is not compared: Stripe's usage billing (meters) "
            "cannot be read back here; the model-API work adds it"
        )
    if raise_flags:
        for difference in report.differences:
            report.flags_raised += flag_raise(
                FinanceFlag.Kind.RECONCILIATION,
                difference.key,
                f"check_books: {difference.line()}",
                organization=Organization.objects.filter(slug=difference.organization).first(),
            )
    return report


# --- Card payments and refunds ------------------------------------------------------------------
def _stripe_time(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def _id(value: Any) -> str | None:
    """A Stripe reference as an id, whether it came expanded or not."""
    return value if isinstance(value, str) or value is None else getattr(value, "id", None)


def _theirs(account: BillingAccount | None, paid_invoices: set[str]) -> dict[str, _Money]:
    """What Stripe captured and refunded per PaymentIntent of this customer (a charge made
    without one under its own id); charges that paid an invoice are the invoice's business."""
    theirs: dict[str, _Money] = defaultdict(_Money)
    if account is None:
        return theirs
    for charge in gateway.charges_list(customer_id=account.stripe_customer_id):
        key = _id(getattr(charge, "payment_intent", None)) or charge.id
        if getattr(charge, "invoice", None) or {key, charge.id} & paid_invoices:
            continue
        side = theirs[key]
        side.currency = side.currency or charge.currency
        side.saw(_stripe_time(charge.created))
        if charge.status != "succeeded" or not getattr(charge, "captured", True):
            continue
        captured = getattr(charge, "amount_captured", None)
        captured = charge.amount if captured is None else captured
        side.took += from_minor(captured, charge.currency)
        side.gave_back += from_minor(charge.amount_refunded or 0, charge.currency)
    return theirs


def _ours(organization: Organization) -> dict[str, _Money]:
    """What the ledger booked as paid and refunded per PaymentIntent (or per payment of ours
    that never had one)."""
    ours: dict[str, _Money] = defaultdict(_Money)
    rows = (
        LedgerEntry.objects.filter(organization=organization, kind__in=[K.PAYMENT, K.REFUND])
        .values("payment__stripe_payment_intent_id", "payment__public_id", "kind", "currency")
        .annotate(total=Sum("amount"), latest=Max("created_at"))
    )
    for row in rows:
        key = row["payment__stripe_payment_intent_id"] or row["payment__public_id"] or "?"
        side = ours[key]
        side.currency = side.currency or row["currency"]
        side.payment = row["payment__public_id"] or ""
        side.saw(row["latest"])
        if row["kind"] == K.PAYMENT:
            side.took += -row["total"]
        else:
            side.gave_back += row["total"]
    return ours


def _check_payments(
    organization: Organization,
    account: BillingAccount | None,
    paid_invoices: set[str],
    as_of: datetime,
    report: BooksReport,
) -> None:
    theirs, ours = _theirs(account, paid_invoices), _ours(organization)
    slug = organization.slug
    for key in sorted(set(theirs) | set(ours)):
        stripe_side = theirs.get(key) or _Money()
        our_side = ours.get(key) or _Money()
        if not stripe_side.took and not our_side.took and not our_side.gave_back:
            continue  # a charge that failed, booked nowhere: nothing moved
        currency = our_side.currency or stripe_side.currency
        if any(side.latest and side.latest >= as_of for side in (stripe_side, our_side)):
            report.too_recent += 1
            continue
        report.payment_intents += 1
        subject = f"payment {key}" + (f" ({our_side.payment})" if our_side.payment else "")
        if stripe_side.currency and our_side.currency and stripe_side.currency != currency:
            report.add(
                slug,
                subject,
                "currency",
                our_side.took,
                stripe_side.took,
                currency,
                f"books:{key}",
                note=f"Stripe charged in {stripe_side.currency.upper()}",
            )
            continue
        if our_side.took != stripe_side.took:
            note = (
                "Stripe took it; the ledger has no payment"
                if not our_side.took
                else "the ledger has a payment Stripe never captured"
                if not stripe_side.took
                else ""
            )
            report.add(
                slug,
                subject,
                "paid",
                our_side.took,
                stripe_side.took,
                currency,
                f"books:{key}",
                note=note,
            )
        if our_side.gave_back != stripe_side.gave_back or stripe_side.gave_back:
            _check_refunds(slug, key, stripe_side, our_side, currency, as_of, report)


def _check_refunds(
    slug: str,
    intent: str,
    stripe_side: _Money,
    our_side: _Money,
    currency: str,
    as_of: datetime,
    report: BooksReport,
) -> None:
    """Refund by refund: Stripe's (listed per charge) against those the ledger booked."""
    stripe_refunds: dict[str, Any] = {}
    # Charges without a PaymentIntent are not ours: their refunds are compared in total only;
    # where Stripe captured nothing, it refunded nothing either.
    listed = intent.startswith("pi_") and stripe_side.took > 0
    for refund in gateway.refunds_list(payment_intent_id=intent) if listed else []:
        if refund.status not in REFUND_GONE:
            stripe_refunds[refund.id] = refund
    booked = (
        LedgerEntry.objects.filter(kind=K.REFUND)
        .filter(Q(payment__stripe_payment_intent_id=intent) | Q(payment__public_id=intent))
        .values("refund__stripe_refund_id", "refund__public_id", "currency")
        .annotate(total=Sum("amount"))
    )
    ours = {row["refund__stripe_refund_id"] or row["refund__public_id"]: row for row in booked}
    made = [_stripe_time(refund.created) for refund in stripe_refunds.values()]
    if any(when is not None and when >= as_of for when in made):
        report.too_recent += 1
        return
    explained = ZERO
    for refund_id in sorted(set(stripe_refunds) | set(ours)):
        report.refunds += 1
        theirs = stripe_refunds.get(refund_id)
        amount = from_minor(theirs.amount, theirs.currency) if theirs is not None else ZERO
        row = ours.get(refund_id)
        booked_amount = row["total"] if row is not None else ZERO
        if amount == booked_amount:
            continue
        explained += amount - booked_amount
        note = (
            "refunded at Stripe; the ledger has no such refund"
            if row is None
            else f"booked as {row['refund__public_id']}; Stripe has no such refund"
            if theirs is None
            else f"booked as {row['refund__public_id']}"
        )
        report.add(
            slug,
            f"refund {refund_id} of {intent}",
            "refunded",
            booked_amount,
            amount,
            currency,
            f"books:{refund_id}",
            note=note,
        )
    # Stripe's charge totals and its refund list should agree; if not, say so on the intent.
    if stripe_side.gave_back - our_side.gave_back != explained:
        report.add(
            slug,
            f"refunds of {intent}",
            "refunded in all",
            our_side.gave_back,
            stripe_side.gave_back,
            currency,
            f"books:refunds:{intent}",
        )


# --- Invoices -----------------------------------------------------------------------------------
def _ledger_by_invoice(organization: Organization) -> dict[tuple[int, str], Decimal]:
    rows = (
        LedgerEntry.objects.filter(organization=organization, invoice__isnull=False)
        .values("invoice_id", "kind")
        .annotate(total=Sum("amount"))
    )
    return {(row["invoice_id"], row["kind"]): row["total"] for row in rows}


def _check_invoices(
    organization: Organization,
    account: BillingAccount | None,
    invoices: list[Invoice],
    invoicing: bool,
    as_of: datetime,
    report: BooksReport,
) -> set[str]:
    """Returns the PaymentIntents and charges that paid these invoices (Stripe's API versions
    since 2025-03-31 no longer name the invoice on a charge)."""
    slug = organization.slug
    ledger = _ledger_by_invoice(organization)
    sent = [invoice for invoice in invoices if invoice.stripe_invoice_id]
    # Inside the ledger, always: an invoice is charged once, for its amount, once it was sent.
    for invoice in invoices:
        charged = ledger.get((invoice.pk, K.CHARGE), ZERO)
        expected = invoice.amount if invoice.stripe_invoice_id else ZERO
        if charged != expected and invoice.created_at < as_of:
            report.add(
                slug,
                f"invoice {invoice.stripe_invoice_id or invoice.pk}",
                "charged in the ledger",
                charged,
                expected,
                invoice.currency,
                f"books:invoice:{invoice.pk}",
                theirs_label="invoice amount",
            )
    if not invoicing:
        unsent = len(invoices) - len(sent)
        parts = []
        if sent:
            total = format_money(sum((i.amount for i in sent), ZERO), sent[0].currency)
            parts.append(
                f"{count_noun(len(sent), 'invoice')} ({total}) not compared "
                "with Stripe (totals, payments, credit notes): this Stripe offers no invoices or "
                "credit notes API"
            )
        if unsent:
            parts.append(
                f"{count_noun(unsent, 'invoice')} never reached Stripe (nothing booked yet)"
            )
        report.unchecked.append(
            f"{slug}: " + "; ".join(parts) + ". Checked: its card payments and refunds, each "
            "invoice's charge in the ledger, and each reservation's ledger."
        )
        return set()
    theirs = (
        {i.id: i for i in gateway.invoices_list(customer_id=account.stripe_customer_id)}
        if account is not None
        else {}
    )
    paid_by: set[str] = set()
    for stripe_id, stripe_invoice in theirs.items():
        for item in (
            gateway.invoice_payments_list(invoice_id=stripe_id)
            if stripe_invoice.amount_paid
            else []
        ):
            payment = getattr(item, "payment", None)
            for ref in (getattr(payment, "payment_intent", None), getattr(payment, "charge", None)):
                if _id(ref):
                    paid_by.add(str(_id(ref)))
    for invoice in sent:
        stripe_invoice = theirs.pop(str(invoice.stripe_invoice_id), None)
        if stripe_invoice is None or invoice.created_at >= as_of:
            if stripe_invoice is None and invoice.created_at < as_of:
                report.add(
                    slug,
                    f"invoice {invoice.stripe_invoice_id}",
                    "invoiced",
                    invoice.amount,
                    ZERO,
                    invoice.currency,
                    f"books:{invoice.stripe_invoice_id}",
                    note="Stripe has no such invoice for this customer",
                )
            continue
        report.invoices += 1
        _compare_invoice(slug, invoice, stripe_invoice, ledger, report)
    for stripe_id, stripe_invoice in theirs.items():
        made = _stripe_time(stripe_invoice.created)
        if stripe_invoice.status in ("draft", "void") or (made is not None and made >= as_of):
            continue
        report.add(
            slug,
            f"invoice {stripe_id}",
            "invoiced",
            ZERO,
            from_minor(stripe_invoice.total, stripe_invoice.currency),
            stripe_invoice.currency,
            f"books:{stripe_id}",
            note="at Stripe; the ledger has no such invoice",
        )
    return paid_by


def _compare_invoice(
    slug: str,
    invoice: Invoice,
    stripe_invoice: Any,
    ledger: dict[tuple[int, str], Decimal],
    report: BooksReport,
) -> None:
    currency = invoice.currency
    stripe_id = str(invoice.stripe_invoice_id)
    total = from_minor(stripe_invoice.total, stripe_invoice.currency)
    charged = ledger.get((invoice.pk, K.CHARGE), ZERO)
    if charged != total:
        report.add(
            slug,
            f"invoice {stripe_id}",
            "invoiced",
            charged,
            total,
            currency,
            f"books:{stripe_id}",
        )
    paid = from_minor(stripe_invoice.amount_paid or 0, stripe_invoice.currency)
    booked_paid = -ledger.get((invoice.pk, K.INVOICE_PAYMENT), ZERO)
    if paid != booked_paid:
        report.add(
            slug,
            f"invoice {stripe_id}",
            "paid",
            booked_paid,
            paid,
            currency,
            f"books:paid:{stripe_id}",
        )
    notes = gateway.credit_notes_list(invoice_id=stripe_id)
    credited = sum(
        (from_minor(n.amount, n.currency) for n in notes if getattr(n, "status", "") != "void"),
        ZERO,
    )
    if stripe_invoice.status == "void":
        credited = total  # voiding credits the whole invoice
    booked_credit = -ledger.get((invoice.pk, K.CREDIT), ZERO)
    if credited != booked_credit:
        report.add(
            slug,
            f"invoice {stripe_id}",
            "credited",
            booked_credit,
            credited,
            currency,
            f"books:credit:{stripe_id}",
        )


# --- Reservations, inside the ledger ------------------------------------------------------------
def _check_reservations(organization: Organization, as_of: datetime, report: BooksReport) -> None:
    """Per reservation with money on it: settled (received less refunded) equals sold (charged)
    less credits; a sold block was charged its price. Open invoices are owed, not settled."""
    rows = (
        LedgerEntry.objects.filter(organization=organization, reservation__isnull=False)
        .exclude(kind=K.USAGE)
        .values("reservation_id", "kind")
        .annotate(total=Sum("amount"), latest=Max("created_at"))
    )
    sums: dict[int, dict[str, Decimal]] = defaultdict(dict)
    latest: dict[int, datetime] = {}
    for row in rows:
        sums[row["reservation_id"]][row["kind"]] = row["total"]
        latest[row["reservation_id"]] = max(
            row["latest"], latest.get(row["reservation_id"], row["latest"])
        )
    invoiced = set(
        Invoice.objects.filter(organization=organization).values_list("reservation_id", flat=True)
    )
    open_invoices = set(
        Invoice.objects.filter(
            organization=organization, status__in=[Invoice.Status.PENDING, Invoice.Status.OPEN]
        ).values_list("reservation_id", flat=True)
    )
    # An extension's invoice sent but withdrawn (credited in full) because the extension could
    # not be applied any more: charged and credited, and no part of the reservation's price.
    withdrawn: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for taken_back in (
        Invoice.objects.filter(organization=organization, stripe_invoice_id__isnull=False)
        .exclude(extension__isnull=True)
        .exclude(extension__state="paid")
        .values("reservation_id")
        .annotate(total=Sum("amount"))
    ):
        withdrawn[taken_back["reservation_id"]] = taken_back["total"]
    given_back = _cancellations_given_back(organization)
    reservations = Reservation.objects.filter(pk__in=list(sums)).only(
        "pk", "public_id", "state", "total", "currency", "updated_at", "refund_due"
    )
    for reservation in reservations.order_by("pk"):
        if reservation.updated_at >= as_of or latest[reservation.pk] >= as_of:
            report.too_recent += 1
            continue
        report.reservations += 1
        money = sums[reservation.pk]
        charged = money.get(K.CHARGE, ZERO)
        credited = -money.get(K.CREDIT, ZERO)
        received = -(money.get(K.PAYMENT, ZERO) + money.get(K.INVOICE_PAYMENT, ZERO))
        settled = received - money.get(K.REFUND, ZERO)
        subject = f"reservation {reservation.public_id} ({reservation.state})"
        slug, currency, key = organization.slug, reservation.currency, reservation.public_id
        if reservation.state in SOLD and charged - withdrawn[reservation.pk] != reservation.total:
            report.add(
                slug,
                subject,
                "sold",
                charged - withdrawn[reservation.pk],
                reservation.total,
                currency,
                f"books:sold:{key}",
                ours_label="charged",
                theirs_label="its price",
            )
        due = reservation.refund_due if reservation.state == S.CANCELED else None
        if due and given_back[reservation.pk] != due:
            report.add(
                slug,
                subject,
                "refunded for the cancellation",
                given_back[reservation.pk],
                due,
                currency,
                f"books:refund_due:{key}",
                ours_label="given back",
                theirs_label="its cancellation refund",
            )
        if reservation.pk in invoiced:
            # Credit notes on a paid invoice go to the customer's Stripe balance, not back:
            # only what can never be right is checked here.
            if credited > charged or (reservation.pk in open_invoices and received > charged):
                report.add(
                    slug,
                    subject,
                    "credited or paid beyond the invoice",
                    max(credited, received),
                    charged,
                    currency,
                    f"books:settled:{key}",
                    ours_label="credited/paid",
                    theirs_label="invoiced",
                )
            continue
        if settled != charged - credited:
            report.add(
                slug,
                subject,
                "settled",
                settled,
                charged - credited,
                currency,
                f"books:settled:{key}",
                ours_label="settled",
                theirs_label="sold less refunds and credits",
                note=f"sold {charged}, refunds and credits {credited}",
            )


def _cancellations_given_back(organization: Organization) -> dict[int, Decimal]:
    """Per canceled reservation, what its cancellation gave back: refunds made for it, credits
    booked on its invoices (not an SLA credit note's) and what its invoice was sent without."""
    given: dict[int, Decimal] = defaultdict(lambda: ZERO)
    canceled = LedgerEntry.objects.filter(organization=organization, reservation__state=S.CANCELED)
    for row in (
        canceled.filter(kind=K.REFUND, refund__settles=Refund.Settles.CANCELLATION)
        .values("reservation_id")
        .annotate(total=Sum("amount"))
    ):
        given[row["reservation_id"]] += row["total"]
    for row in (
        canceled.filter(kind=K.CREDIT, invoice__isnull=False, sla_credit__isnull=True)
        # An extension's invoice withdrawn before it was applied is credited as no sale.
        .filter(Q(invoice__extension__isnull=True) | Q(invoice__extension__state="paid"))
        .values("reservation_id")
        .annotate(total=Sum("amount"))
    ):
        given[row["reservation_id"]] -= row["total"]  # credits are negative
    for reservation_id, waived in Invoice.objects.filter(
        organization=organization,
        extension__isnull=True,
        stripe_invoice_id__isnull=False,
        reservation__state=S.CANCELED,
    ).values_list("reservation_id", "waived"):
        given[reservation_id] += waived
    return given
