"""What finance staff do in the back office: refunds, webhook replays, resolving flags, prices.

Every service takes the acting staff user, checks their permission itself (the admin hides
what a user may not do, but the service is the guarantee) and writes an audit event in the
same transaction as the change.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from core import audit
from core.errors import Conflict, NotAllowed, ServiceError
from core.money import ZERO_DECIMAL, format_money
from core.staff import reason_clean, staff_may
from core.tasks import enqueue_after_commit

from . import gateway, services
from .models import FinanceFlag, ModelPrice, Payment, Refund, WebhookEvent, WebhookProcessing


def _require(actor: User, permission: str, message: str) -> None:
    if not staff_may(actor, permission):
        raise NotAllowed(message)


# --- Refunds ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefundPosition:
    """Where a payment stands: what was paid, refunded, in flight and still refundable."""

    paid: Decimal
    refunded: Decimal
    pending: Decimal
    currency: str

    @property
    def refundable(self) -> Decimal:
        return max(self.paid - self.refunded - self.pending, Decimal("0.00"))


def refund_position(payment: Payment) -> RefundPosition:
    pending = payment.refunds.filter(status=Refund.Status.PENDING).aggregate(s=Sum("amount"))["s"]
    return RefundPosition(
        paid=payment.amount,
        refunded=payment.amount_refunded,
        pending=pending or Decimal("0.00"),
        currency=payment.currency,
    )


def refund_check(*, payment: Payment, amount: Decimal, reason: str, actor: User) -> None:
    """Raise the error a refund of `amount` would meet, without changing anything."""
    _require(actor, "billing.issue_refund", "Only finance staff can refund payments.")
    if payment.status not in Payment.RECEIVED:
        raise Conflict(
            f"Only a successful payment can be refunded; this one is "
            f"{payment.get_status_display().lower()}.",
            code="not_refundable",
        )
    reason_clean(reason, missing="Say why the money goes back; the reason is kept.")
    if not amount.is_finite() or amount <= 0:
        raise ServiceError("Refund an amount above zero.", param="amount")
    places = 0 if payment.currency.lower() in ZERO_DECIMAL else 2
    # The exponent, not quantize: quantizing a huge amount raises instead of answering.
    if -amount.normalize().as_tuple().exponent > places:
        raise ServiceError(
            f"{payment.currency.upper()} amounts have at most {places} decimal places.",
            param="amount",
        )
    position = refund_position(payment)
    if amount > position.refundable:
        raise ServiceError(
            f"At most {format_money(position.refundable, payment.currency)} can still be "
            "refunded on this payment.",
            code="refund_too_large",
            param="amount",
        )


def refund_by_staff(*, payment: Payment, amount: Decimal, reason: str, actor: User) -> Refund:
    """Refund part or all of a payment on a staff member's say-so.

    The pending refund and the audit of the request are committed before Stripe is called
    (the refund's id is the idempotency key), so a timeout cannot pay out twice. If Stripe
    refuses, the refund is marked failed with Stripe's message and the PaymentError is raised;
    if Stripe cannot be reached the refund stays pending and the settlement sweep sends it.
    """
    reason = reason.strip()
    refund_check(payment=payment, amount=amount, reason=reason, actor=actor)
    with transaction.atomic():
        # refund_open re-checks what is left under the payment's lock.
        refund = services.refund_open(payment=payment, amount=amount, reason=reason, actor=actor)
        audit.record(
            action="refund.requested",
            actor=actor,
            organization=payment.organization,
            target=refund,
            data={
                "payment": payment.public_id,
                "amount": str(amount),
                "currency": refund.currency,
            },
            reason=reason,
        )
    try:
        return services.refund_send(refund)
    except gateway.GatewayUnavailable:
        raise
    except gateway.PaymentError as exc:
        _refund_failed(refund, actor, exc.message)
        raise


@transaction.atomic
def _refund_failed(refund: Refund, actor: User, message: str) -> None:
    updated = Refund.objects.filter(pk=refund.pk, status=Refund.Status.PENDING).update(
        status=Refund.Status.FAILED, failure_message=message[:300]
    )
    if updated:
        audit.record(
            action="refund.failed",
            actor=actor,
            organization=refund.payment.organization,
            target=refund,
            data={"payment": refund.payment.public_id, "message": message[:300]},
            reason=refund.reason,
        )


# --- Webhook events -----------------------------------------------------------------------------
@transaction.atomic
def webhook_replay(*, event: WebhookEvent, actor: User) -> WebhookProcessing:
    """Process a stored event again (after commit, in the usual task).

    Processing re-reads the object from Stripe and applies only legal transitions, so
    replaying an event that was already applied changes nothing but the attempt count.
    """
    _require(actor, "billing.replay_webhookevent", "Only finance staff can replay webhook events.")
    processing, _ = WebhookProcessing.objects.select_for_update().get_or_create(event=event)
    before = processing.status
    processing.status = WebhookProcessing.Status.PENDING
    processing.save(update_fields=["status", "updated_at"])
    audit.record(
        action="webhook_event.replayed",
        actor=actor,
        target=event,
        data={
            "event": event.stripe_event_id,
            "type": event.type,
            "status_before": before,
            "attempts_before": processing.attempts,
        },
    )
    enqueue_after_commit("billing.process_webhook_event", event_id=event.pk)
    return processing


# --- Finance flags ------------------------------------------------------------------------------
@transaction.atomic
def flag_resolve(*, flag: FinanceFlag, actor: User, resolution: str) -> FinanceFlag:
    """Close a flag with what finance did about it."""
    _require(actor, "billing.resolve_financeflag", "Only finance staff can resolve flags.")
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
            f"Already resolved by {who} on {locked.resolved_at:%Y-%m-%d %H:%M} UTC.",
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


# --- Model prices -------------------------------------------------------------------------------
PRICE_FIELDS = ("model", "input_per_million", "output_per_million", "currency")


@transaction.atomic
def model_price_save(*, price: ModelPrice, actor: User) -> ModelPrice:
    """Create or change the price of a hosted model; new usage hours are priced with it."""
    creating = price.pk is None
    _require(
        actor,
        "billing.add_modelprice" if creating else "billing.change_modelprice",
        "Only finance staff can set model prices.",
    )
    before: dict[str, Any] = {}
    if not creating:
        old = ModelPrice.objects.select_for_update().get(pk=price.pk)
        before = {f: str(getattr(old, f)) for f in PRICE_FIELDS}
    price.full_clean()
    price.save()
    after = {f: str(getattr(price, f)) for f in PRICE_FIELDS}
    changes = {f: [before.get(f), after[f]] for f in PRICE_FIELDS if before.get(f) != after[f]}
    audit.record(
        action="model_price.created" if creating else "model_price.changed",
        actor=actor,
        target=price,
        data={"changes": changes},
    )
    return price
