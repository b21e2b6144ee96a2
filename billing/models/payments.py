"""Billing accounts, card payments and their refunds."""

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from core.ids import public_id

# Money stored as an amount (a price, a cost, a credit) is never below 0; only LedgerEntry
# carries a sign, on purpose: charges positive, what settles them negative.
NOT_NEGATIVE = MinValueValidator(Decimal("0"))
AT_LEAST_A_CENT = MinValueValidator(Decimal("0.01"))


def new_payment_id() -> str:
    return public_id("pay_")


def new_refund_id() -> str:
    return public_id("ref_")


class BillingAccount(models.Model):
    """The organization's Stripe customer, created the first time it is needed."""

    organization = models.OneToOneField(
        "accounts.Organization", on_delete=models.PROTECT, related_name="billing_account"
    )
    stripe_customer_id = models.CharField(max_length=64, unique=True)
    default_payment_method_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.stripe_customer_id


class Payment(models.Model):
    """One Stripe PaymentIntent for one reservation (or an extension of it)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Awaiting payment"
        REQUIRES_ACTION = "requires_action", "Needs authentication"
        PROCESSING = "processing", "Processing"
        SUCCEEDED = "succeeded", "Paid"
        # Stripe took the money for a reservation another payment had already paid (a retry
        # with a new attempt while the first was still pending): refunded in full.
        DUPLICATE = "duplicate", "Refunded in full (paid twice, or too late to apply)"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"

    # The statuses in which Stripe holds the customer's money for this payment.
    RECEIVED = (Status.SUCCEEDED, Status.DUPLICATE)

    public_id = models.CharField(max_length=24, unique=True, default=new_payment_id, editable=False)
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="payments"
    )
    reservation = models.ForeignKey(
        "capacity.Reservation", on_delete=models.PROTECT, related_name="payments"
    )
    # Set when the payment is for an extension of the reservation (its own price, its own
    # success); empty for the reservation's own payment.
    extension = models.ForeignKey(
        "capacity.Extension",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="payments",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    stripe_payment_intent_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    # One per press of "Pay": the same token (a double click, a retried request) is one payment.
    attempt_token = models.CharField(max_length=64)
    # Whether the customer asked to keep the card for later; other cards are detached once the
    # payment is settled, so the organization's saved cards are the ones it chose to save.
    keep_card = models.BooleanField(default=False)
    amount = models.DecimalField(max_digits=14, decimal_places=2, validators=[AT_LEAST_A_CENT])
    currency = models.CharField(max_length=3)
    amount_refunded = models.DecimalField(
        max_digits=14, decimal_places=2, default=Decimal("0.00"), validators=[NOT_NEGATIVE]
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    failure_message = models.CharField(max_length=300, blank=True)
    card_brand = models.CharField(max_length=20, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    flagged = models.BooleanField(default=False, help_text="Needs a look from finance.")
    flag_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    succeeded_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"]),
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["created_at"]),
            models.Index(fields=["currency", "created_at"]),
            models.Index(
                fields=["created_at"],
                condition=models.Q(flagged=True),
                name="billing_payment_flagged_idx",
            ),
        ]
        permissions = [("issue_refund", "Can refund payments")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount__gt=0), name="billing_payment_amount_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(amount_refunded__gte=0, amount_refunded__lte=models.F("amount")),
                name="billing_payment_refund_within_amount",
            ),
            models.UniqueConstraint(
                fields=["reservation", "attempt_token"], name="billing_payment_attempt_once"
            ),
            # At most one successful payment for a reservation's own hours, and one for each
            # extension: a second charge is impossible.
            models.UniqueConstraint(
                fields=["reservation"],
                condition=models.Q(status="succeeded", extension__isnull=True),
                name="billing_payment_one_success_per_reservation",
            ),
            models.UniqueConstraint(
                fields=["extension"],
                condition=models.Q(status="succeeded", extension__isnull=False),
                name="billing_payment_one_success_per_extension",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def refundable(self) -> Decimal:
        return self.amount - self.amount_refunded


class Refund(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Refunded"
        FAILED = "failed", "Failed"

    class Settles(models.TextChoices):
        """What a refund made by the system settles; each is given once per payment (a try
        Stripe failed does not count: settlement tries again, or gives up and flags it)."""

        NOTHING = "", "Nothing (a refund staff chose)"
        CANCELLATION = "cancellation", "The reservation's cancellation"
        FAILURE = "failure", "The reservation's failed provisioning"

    public_id = models.CharField(max_length=24, unique=True, default=new_refund_id, editable=False)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    stripe_refund_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, validators=[AT_LEAST_A_CENT])
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=500)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    failure_message = models.CharField(max_length=300, blank=True)
    # Stripe's failure_reason for a refund it failed, or its error code for one it refused.
    failure_code = models.CharField(max_length=64, blank=True)
    # Settlement gave up on this failed settling refund (Stripe refused it for good, or it was
    # the last try): it stands for the payment's settling refund so nothing tries again, and a
    # finance flag says what the customer was not given back.
    refused = models.BooleanField(default=False)
    settles = models.CharField(max_length=16, choices=Settles.choices, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["created_at"]),
            models.Index(fields=["currency", "created_at"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount__gt=0), name="billing_refund_amount_positive"
            ),
            # A cancellation or a failure is refunded once, however often settlement runs; a
            # try Stripe failed leaves room for the next one, unless it was given up on.
            models.UniqueConstraint(
                fields=["payment", "settles"],
                condition=~models.Q(settles="")
                & (~models.Q(status="failed") | models.Q(refused=True)),
                name="billing_refund_settles_once",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id
