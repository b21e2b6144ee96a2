from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class AppendOnly(models.Model):
    """Rows that record what happened: written once, never changed or deleted."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError(f"{type(self).__name__} rows are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise PermissionError(f"{type(self).__name__} rows are append-only.")


class AuditEvent(AppendOnly):
    """One state change: who did it, what, to which object, when, from where, and why.

    Append-only: rows are written by `core.audit.record` and never changed or deleted.
    """

    class ActorKind(models.TextChoices):
        CUSTOMER = "customer", "Customer"
        STAFF = "staff", "Staff"
        SYSTEM = "system", "System"

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_email = models.EmailField(blank=True)
    organization = models.ForeignKey(
        settings.TENANT_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_events",
    )
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        db_table = "portal_auditevent"  # the table (and its append-only trigger) predates core
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"]),
            models.Index(fields=["object_type", "object_id"]),
            models.Index(fields=["actor", "-created_at"]),
            models.Index(fields=["action"]),
            models.Index(fields=["actor_kind", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_repr}".strip()


class IdempotencyRecord(models.Model):
    """The first response to a POST sent with an Idempotency-Key, replayed for 24 hours."""

    owner = models.CharField(max_length=80, help_text="The API key or user that sent it.")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "portal_idempotencyrecord"
        constraints = [
            models.UniqueConstraint(fields=["owner", "key"], name="portal_idempotency_once"),
        ]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.owner}: {self.key}"
