from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from core.ids import public_id
from core.models import AppendOnly
from core.money import NOT_TO_THE_CENT, validate_currency

# Money stored as an amount (a price, a cost, a credit) is never below 0; only LedgerEntry
# carries a sign, on purpose: charges positive, what settles them negative.
NOT_NEGATIVE = MinValueValidator(Decimal("0"))


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
        DUPLICATE = "duplicate", "Paid twice (refunded)"
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
    amount = models.DecimalField(
        max_digits=14, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))]
    )
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
        """What a refund made by the system settles; each happens once per payment."""

        NOTHING = "", "Nothing (a refund staff chose)"
        CANCELLATION = "cancellation", "The reservation's cancellation"
        FAILURE = "failure", "The reservation's failed provisioning"

    public_id = models.CharField(max_length=24, unique=True, default=new_refund_id, editable=False)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    stripe_refund_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    amount = models.DecimalField(
        max_digits=14, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))]
    )
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=500)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    failure_message = models.CharField(max_length=300, blank=True)
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
            # A cancellation or a failure is refunded once, however often settlement runs.
            models.UniqueConstraint(
                fields=["payment", "settles"],
                condition=~models.Q(settles=""),
                name="billing_refund_settles_once",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id


class Invoice(models.Model):
    """A Stripe invoice (send_invoice, net-N) for a reservation on invoice terms."""

    class Status(models.TextChoices):
        PENDING = "pending", "Being created"
        OPEN = "open", "Open"
        PAID = "paid", "Paid"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"
        VOID = "void", "Void"

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="invoices"
    )
    reservation = models.OneToOneField(
        "capacity.Reservation", on_delete=models.PROTECT, related_name="invoice"
    )
    stripe_invoice_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    number = models.CharField(max_length=64, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    due_at = models.DateTimeField(null=True, blank=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    payment_failed = models.BooleanField(default=False)
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
            models.CheckConstraint(
                condition=models.Q(amount__gte=0), name="billing_invoice_amount_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"Invoice {self.pk}"


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
            models.UniqueConstraint(
                fields=["kind", "invoice"],
                condition=models.Q(invoice__isnull=False),
                name="billing_ledger_once_per_invoice",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.currency}"


class WebhookEvent(AppendOnly):
    """A Stripe event, stored once by its id before anything else happens."""

    stripe_event_id = models.CharField(max_length=80, unique=True)
    type = models.CharField(max_length=80)
    object_id = models.CharField(max_length=80, blank=True)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["type", "received_at"]),
            models.Index(fields=["received_at"]),
            models.Index(fields=["object_id"]),
        ]
        permissions = [("replay_webhookevent", "Can replay Stripe webhook events")]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_event_id}"


class WebhookProcessing(models.Model):
    """How processing of one event went (kept apart so the event itself never changes).

    Written by the processing task; an event without one has not been picked up yet."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored (type not handled)"
        FAILED = "failed", "Failed"

    event = models.OneToOneField(WebhookEvent, on_delete=models.PROTECT, related_name="processing")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["status", "updated_at"])]

    def __str__(self) -> str:
        return f"{self.event_id}: {self.status}"


class FinanceFlag(models.Model):
    """Something finance must look at: a dispute, an amount mismatch, a reconciliation gap."""

    class Kind(models.TextChoices):
        DISPUTE = "dispute", "Dispute"
        AMOUNT_MISMATCH = "amount_mismatch", "Amount or currency mismatch"
        UNKNOWN_PAYMENT = "unknown_payment", "Payment we do not know"
        RECONCILIATION = "reconciliation", "Reconciliation difference"
        LATE_PAYMENT_REFUNDED = "late_payment_refunded", "Late payment refunded"
        INVOICE_FAILED = "invoice_failed", "Invoice payment failed"

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


class ModelPrice(models.Model):
    """The price of a hosted model, per million input and output tokens."""

    model = models.SlugField(max_length=80, unique=True)
    input_per_million = models.DecimalField(
        max_digits=10, decimal_places=4, validators=[NOT_NEGATIVE]
    )
    output_per_million = models.DecimalField(
        max_digits=10, decimal_places=4, validators=[NOT_NEGATIVE]
    )
    currency = models.CharField(max_length=3, default="usd", validators=[validate_currency])

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(input_per_million__gte=0, output_per_million__gte=0),
                name="billing_modelprice_not_negative",
            ),
            # Usage is costed to the cent in this currency and charged from it.
            models.CheckConstraint(
                condition=~models.Q(currency__in=sorted(NOT_TO_THE_CENT)),
                name="billing_modelprice_currency_to_the_cent",
            ),
        ]

    def __str__(self) -> str:
        return self.model


class UsageEvent(models.Model):
    """One call to a hosted model, as the gateway reported it; stored once per event id."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="+"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    event_id = models.CharField(max_length=120)
    model = models.SlugField(max_length=80)
    input_tokens = models.PositiveBigIntegerField()
    output_tokens = models.PositiveBigIntegerField()
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    hour = models.ForeignKey(
        "UsageHour", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "event_id"], name="billing_usage_event_once"
            ),
        ]
        indexes = [
            models.Index(fields=["hour", "occurred_at"]),
            models.Index(fields=["organization", "occurred_at"]),
        ]

    def __str__(self) -> str:
        return self.event_id


class UsageHour(models.Model):
    """An organization's tokens for one model in one hour, priced, booked and metered once."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="+"
    )
    model = models.SlugField(max_length=80)
    hour = models.DateTimeField()
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(
        max_digits=14, decimal_places=2, default=Decimal("0.00"), validators=[NOT_NEGATIVE]
    )
    currency = models.CharField(max_length=3, default="usd")
    pushed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-hour"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cost__gte=0), name="billing_usage_hour_cost_not_negative"
            ),
            models.UniqueConstraint(
                fields=["organization", "model", "hour"], name="billing_usage_hour_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.model} {self.hour:%Y-%m-%d %H}:00"


def new_sla_credit_id() -> str:
    return public_id("slc_")


class SlaCredit(models.Model):
    """A credit for time a block fell short of what was sold, once per incident.

    Written pending with its amount (billing.services.sla), then paid back: refunds to the
    block's card payments (each refund `settles` "sla:<this id>", so one per payment and
    credit) or a Stripe credit note on its latest invoice. The unique (reservation, cause, key)
    is the guarantee that an incident reported twice is credited once.
    """

    class Cause(models.TextChoices):
        DEGRADED = "degraded", "Ran degraded (a node failed, no spare)"
        LATE_START = "late_start", "Started late"
        FORCE_RELEASED = "force_released", "Released early by Hyperblock"

    class Status(models.TextChoices):
        PENDING = "pending", "Being credited"
        GRANTED = "granted", "Credited"
        FAILED = "failed", "Failed (finance is looking at it)"

    class Method(models.TextChoices):
        REFUND = "refund", "Refund to the card"
        CREDIT_NOTE = "credit_note", "Credit note on the invoice"

    public_id = models.CharField(
        max_length=24, unique=True, default=new_sla_credit_id, editable=False
    )
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="+"
    )
    reservation = models.ForeignKey(
        "capacity.Reservation", on_delete=models.PROTECT, related_name="sla_credits"
    )
    cause = models.CharField(max_length=16, choices=Cause.choices)
    # What the cause is about: the incident's id for a failed node, "start", "release".
    key = models.CharField(max_length=64)
    minutes = models.PositiveIntegerField(help_text="The time lost, as capacity measured it.")
    node_hours = models.DecimalField(max_digits=12, decimal_places=4, validators=[NOT_NEGATIVE])
    percent = models.DecimalField(max_digits=6, decimal_places=2, validators=[NOT_NEGATIVE])
    # What the policy gave, and what was credited once capped by what was paid.
    computed = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    amount = models.DecimalField(
        max_digits=14, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))]
    )
    currency = models.CharField(max_length=3)
    method = models.CharField(max_length=16, choices=Method.choices)
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="sla_credits"
    )
    stripe_credit_note_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    failure_message = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    granted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["reservation", "cause", "key"], name="billing_sla_credit_once"
            ),
            models.CheckConstraint(
                condition=models.Q(amount__gt=0, amount__lte=models.F("computed")),
                name="billing_sla_credit_amount_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(node_hours__gte=0, percent__gte=0),
                name="billing_sla_credit_measures_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def refund_settles(self) -> str:
        """The `Refund.settles` of this credit's refunds: one per payment and credit."""
        return f"sla:{self.pk}"
