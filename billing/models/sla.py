"""SLA credits: what a block that fell short of what was sold is given back."""

from django.db import models
from django.utils import timezone

from core.ids import public_id

from .invoices import Invoice
from .payments import AT_LEAST_A_CENT, NOT_NEGATIVE


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
    amount = models.DecimalField(max_digits=14, decimal_places=2, validators=[AT_LEAST_A_CENT])
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
        # The back office's filters (status, cause, method, created) each have their index.
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["cause", "created_at"]),
            models.Index(fields=["method", "created_at"]),
            models.Index(fields=["created_at"]),
        ]
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
