"""Invoices (net-N, one per block and one per extension) and their overdue reminders."""

from decimal import Decimal

from django.db import models
from django.utils import timezone

from .payments import NOT_NEGATIVE


class Invoice(models.Model):
    """A Stripe invoice (send_invoice, net-N) on invoice terms: one for a reservation's block and
    one for each extension of it (a sent Stripe invoice takes no new lines)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Being created"
        OPEN = "open", "Open"
        PAID = "paid", "Paid"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"
        VOID = "void", "Void"

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="invoices"
    )
    reservation = models.ForeignKey(
        "capacity.Reservation", on_delete=models.PROTECT, related_name="invoices"
    )
    # Set on an extension's invoice (its extra hours); empty on the block's own invoice.
    extension = models.OneToOneField(
        "capacity.Extension",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="invoice",
    )
    stripe_invoice_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    number = models.CharField(max_length=64, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    # The refund of a block canceled before its invoice went out, taken off the amount instead
    # of credited later.
    waived = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    due_at = models.DateTimeField(null=True, blank=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    payment_failed = models.BooleanField(default=False)
    # Tries to create it at Stripe that failed; the settlement sweep tries again up to
    # INVOICE_CREATE_MAX_ATTEMPTS, then finance is told.
    attempts = models.PositiveIntegerField(default=0)
    # Raised after each definite refusal: the next try is a new request at Stripe (which keeps
    # a refused request's answer under its idempotency key); an outage keeps the key.
    key_version = models.PositiveSmallIntegerField(default=0, editable=False)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"]),
            models.Index(fields=["status", "due_at"]),
            models.Index(fields=["created_at"]),
            models.Index(fields=["payment_failed", "created_at"]),
        ]
        constraints = [
            # One invoice for the block's own hours; each extension has its own (one-to-one).
            models.UniqueConstraint(
                fields=["reservation"],
                condition=models.Q(extension__isnull=True),
                name="billing_invoice_one_per_block",
            ),
            models.CheckConstraint(
                condition=models.Q(amount__gte=0), name="billing_invoice_amount_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"Invoice {self.pk}"


class InvoiceReminder(models.Model):
    """A reminder e-mailed for an overdue invoice, once per step of INVOICE_REMINDER_DAYS."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="reminders")
    days_overdue = models.PositiveSmallIntegerField()
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["invoice", "days_overdue"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice", "days_overdue"], name="billing_invoice_reminder_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.invoice_id} +{self.days_overdue} d"
