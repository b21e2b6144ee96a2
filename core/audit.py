"""The audit log writer. Every service that changes state calls `record` in its transaction."""

from typing import Any

from django.db import models

from . import context
from .models import AuditEvent


def record(
    *,
    action: str,
    actor: Any | None,
    organization: Any | None = None,
    target: models.Model | None = None,
    data: dict[str, Any] | None = None,
    reason: str = "",
) -> AuditEvent:
    """Append one audit event; `actor` None means the system did it (a task, a webhook)."""
    if actor is None:
        kind = AuditEvent.ActorKind.SYSTEM
    elif actor.is_staff:
        kind = AuditEvent.ActorKind.STAFF
    else:
        kind = AuditEvent.ActorKind.CUSTOMER
    rid = context.request_id.get()
    return AuditEvent.objects.create(
        actor=actor,
        actor_kind=kind,
        actor_email=getattr(actor, "email", "") or "",
        organization=organization,
        action=action,
        object_type=target._meta.label_lower if target is not None else "",
        object_id=str(target.pk) if target is not None else "",
        object_repr=str(target)[:200] if target is not None else "",
        data=data or {},
        reason=reason,
        ip_address=context.client_ip.get() if actor is not None else None,
        request_id="" if rid == "-" else rid,
    )
