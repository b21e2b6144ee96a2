"""Finance flags: what finance is told (once per object and kind) and how it is resolved."""

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization, User
from core import audit
from core.dates import format_datetime
from core.errors import Conflict, ServiceError

from ..models import FinanceFlag, Payment
from .accounts import require_finance_staff

logger = logging.getLogger(__name__)


def flag_raise(
    kind: str,
    stripe_object_id: str,
    detail: str,
    *,
    payment: Payment | None = None,
    organization: Organization | None = None,
) -> bool:
    """Tell finance, once per object and kind (audited); False when it was already told."""
    organization = organization or (payment.organization if payment else None)
    try:
        with transaction.atomic():
            flag = FinanceFlag.objects.create(
                kind=kind,
                stripe_object_id=stripe_object_id,
                detail=detail,
                payment=payment,
                organization=organization,
            )
            audit.record(
                action="finance_flag.raised",
                actor=None,
                organization=organization,
                target=flag,
                data={"kind": kind, "stripe_object": stripe_object_id},
                reason=detail,
            )
    except IntegrityError:
        return False
    logger.warning("finance flag %s on %s: %s", kind, stripe_object_id, detail)
    return True


@transaction.atomic
def flag_resolve(*, flag: FinanceFlag, actor: User, resolution: str) -> FinanceFlag:
    """Close a flag with what finance did about it."""
    require_finance_staff(
        actor, "billing.resolve_financeflag", "Only finance staff can resolve flags."
    )
    resolution = resolution.strip()
    if not resolution:
        raise ServiceError(
            "Say what was done about it; the resolution is kept.", param="resolution"
        )
    locked = (
        FinanceFlag.objects.select_for_update(of=("self",))
        .select_related("resolved_by")
        .get(pk=flag.pk)
    )
    if locked.resolved_at is not None:
        who = locked.resolved_by.email if locked.resolved_by else "someone"
        raise Conflict(
            f"Already resolved by {who} on {format_datetime(locked.resolved_at)}.",
            code="already_resolved",
        )
    locked.resolved_at = timezone.now()
    locked.resolved_by = actor
    locked.resolution = resolution
    locked.full_clean()
    locked.save(update_fields=["resolved_at", "resolved_by", "resolution"])
    audit.record(
        action="finance_flag.resolved",
        actor=actor,
        organization=locked.organization,
        target=locked,
        data={"kind": locked.kind, "object": locked.stripe_object_id},
        reason=resolution,
    )
    return locked
