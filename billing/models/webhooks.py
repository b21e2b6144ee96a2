"""Stripe events as received, and how their processing went."""

from django.db import models
from django.utils import timezone

from core.models import AppendOnly


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
