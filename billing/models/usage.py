"""Token usage of hosted models: prices, events and hourly roll-ups."""

from decimal import Decimal

from django.db import models
from django.utils import timezone

from core.dates import format_datetime
from core.money import NOT_TO_THE_CENT, validate_currency

from .payments import NOT_NEGATIVE


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
        return f"{self.organization_id} {self.model} {format_datetime(self.hour)}"
