"""The append-only ledger and the flags finance reads."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.models import AppendOnly

from .invoices import Invoice
from .payments import Payment, Refund


class LedgerEntry(AppendOnly):
    """One money movement on an organization's account; the balance is their sum.

    Positive amounts are owed by the customer (charges), negative ones settle or credit them
    (payments received, cancellation credits). A refund paid out is positive again: the money
    went back to the customer.
    """

    class Kind(models.TextChoices):
        CHARGE = "charge", "Charge"
        PAYMENT = "payment", "Card payment"
        INVOICE_PAYMENT = "invoice_payment", "Invoice payment"
        CREDIT = "credit", "Credit"
        REFUND = "refund", "Refund"
        USAGE = "usage", "Token usage"
        # A dispute the customer won at the bank: Stripe took the payment back from us.
        DISPUTE_LOSS = "dispute_loss", "Dispute lost"

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="ledger_entries"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    description = models.CharField(max_length=300)
    reservation = models.ForeignKey(
        "capacity.Reservation", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    refund = models.ForeignKey(
        Refund, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    usage_hour = models.ForeignKey(
        "UsageHour", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # An SLA credit's credit note: the row names its invoice too (so the invoice's credits add
    # up to Stripe's credit notes), but it is no cancellation's credit of that invoice.
    sla_credit = models.ForeignKey(
        "SlaCredit", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"]),
            models.Index(fields=["kind", "created_at"]),
            models.Index(fields=["created_at"]),
            models.Index(fields=["currency", "created_at"]),
        ]
        verbose_name_plural = "ledger entries"
        constraints = [
            # One entry of each kind per money object: replays cannot book twice.
            models.UniqueConstraint(
                fields=["kind", "payment"],
                condition=models.Q(payment__isnull=False, refund__isnull=True),
                name="billing_ledger_once_per_payment",
            ),
            models.UniqueConstraint(
                fields=["kind", "refund"],
                condition=models.Q(refund__isnull=False),
                name="billing_ledger_once_per_refund",
            ),
            # The invoice's own movements (its charge, its payment, a cancellation's credit);
            # SLA credit notes on it are booked once per credit instead.
            models.UniqueConstraint(
                fields=["kind", "invoice"],
                condition=models.Q(invoice__isnull=False, sla_credit__isnull=True),
                name="billing_ledger_once_per_invoice",
            ),
            models.UniqueConstraint(
                fields=["kind", "sla_credit"],
                condition=models.Q(sla_credit__isnull=False),
                name="billing_ledger_once_per_sla_credit",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.currency}"


class FinanceFlag(models.Model):
    """Something finance must look at: a dispute, an amount mismatch, a reconciliation gap."""

    class Kind(models.TextChoices):
        DISPUTE = "dispute", "Dispute"
        AMOUNT_MISMATCH = "amount_mismatch", "Amount or currency mismatch"
        UNKNOWN_PAYMENT = "unknown_payment", "Payment we do not know"
        RECONCILIATION = "reconciliation", "Reconciliation difference"
        LATE_PAYMENT_REFUNDED = "late_payment_refunded", "Late payment refunded"
        INVOICE_FAILED = "invoice_failed", "Invoice payment failed"
        INVOICE_NOT_SENT = "invoice_not_sent", "Invoice could not be created"
        INVOICE_UNCOLLECTIBLE = "invoice_uncollectible", "Invoice marked uncollectible"
        DISPUTE_LOST = "dispute_lost", "Dispute lost"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    organization = models.ForeignKey(
        "accounts.Organization", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="flags"
    )
    stripe_object_id = models.CharField(max_length=80)
    detail = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolution = models.TextField(blank=True, help_text="What finance did about it.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["resolved_at", "created_at"]),
            models.Index(fields=["kind", "created_at"]),
        ]
        permissions = [("resolve_financeflag", "Can resolve finance flags")]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "stripe_object_id"], name="billing_flag_once_per_object"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.stripe_object_id}"
