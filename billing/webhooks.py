"""Stripe webhooks: store each event once, acknowledge fast, process in a task.

Processing never trusts the event's copy of the object: it reads the object from Stripe again
and applies only what is legal from our current state, so duplicates and out-of-order
deliveries change nothing.
"""

import json
import logging
from collections.abc import Callable

from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from accounts.models import User
from core import audit
from core.metrics import WEBHOOK_LAG
from core.tasks import enqueue_after_commit

from . import gateway
from .models import WebhookEvent, WebhookProcessing
from .services import disputes, invoices, payments, refunds
from .services.accounts import require_finance_staff

logger = logging.getLogger(__name__)


class BadEvent(ValueError):
    pass


def webhook_receive(payload: bytes, signature: str) -> tuple[WebhookEvent, bool]:
    """Verify and store an event; returns (event, created). Raises BadEvent or the gateway's
    WebhookSignatureError; in both cases nothing is stored."""
    gateway.verify_webhook(payload, signature)
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise BadEvent("The body is not valid JSON.") from exc
    try:
        event_id, event_type = body["id"], body["type"]
        data_object = body.get("data", {}).get("object", {}) or {}
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadEvent("The event has no id or type.") from exc
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) > 80:
        raise BadEvent("The event id is not valid.")
    object_id = data_object.get("id", "") if isinstance(data_object, dict) else ""
    try:
        with transaction.atomic():
            stored = WebhookEvent.objects.create(
                stripe_event_id=event_id,
                type=str(event_type)[:80],
                object_id=str(object_id)[:80],
                payload=body,
            )
    except IntegrityError:
        return WebhookEvent.objects.get(stripe_event_id=event_id), False
    enqueue_after_commit("billing.process_webhook_event", event_id=stored.pk)
    return stored, True


def _charge_refunded(charge_id: str) -> None:
    charge = gateway.charge_retrieve(charge_id)
    intent = getattr(charge, "payment_intent", None)
    if intent:
        refunds.refunds_sync(payment_intent_id=intent if isinstance(intent, str) else intent.id)


def _payment_intent(intent_id: str) -> None:
    payments.payment_sync(payment_intent_id=intent_id)


HANDLERS: dict[str, Callable[[str], object]] = {
    "payment_intent.succeeded": _payment_intent,
    "payment_intent.payment_failed": _payment_intent,
    "payment_intent.processing": _payment_intent,
    "payment_intent.requires_action": _payment_intent,
    "payment_intent.canceled": _payment_intent,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": lambda dispute_id: disputes.dispute_record(dispute_id=dispute_id),
    "charge.dispute.closed": lambda dispute_id: disputes.dispute_close_record(
        dispute_id=dispute_id
    ),
    "invoice.paid": lambda invoice_id: invoices.invoice_sync(stripe_invoice_id=invoice_id),
    "invoice.payment_failed": lambda invoice_id: invoices.invoice_failure_record(
        stripe_invoice_id=invoice_id
    ),
    "invoice.marked_uncollectible": lambda invoice_id: invoices.invoice_uncollectible_record(
        stripe_invoice_id=invoice_id
    ),
    "invoice.voided": lambda invoice_id: invoices.invoice_sync(stripe_invoice_id=invoice_id),
}


def webhook_process(event_pk: int) -> str:
    """Apply one stored event; returns the resulting status. Raises the gateway's
    GatewayUnavailable so the task can retry later."""
    event = WebhookEvent.objects.get(pk=event_pk)
    processing, _ = WebhookProcessing.objects.get_or_create(event=event)
    if processing.status in (WebhookProcessing.Status.PROCESSED, WebhookProcessing.Status.IGNORED):
        return processing.status  # handlers are idempotent; this only saves Stripe calls
    handler = HANDLERS.get(event.type)
    if handler is None:
        return _finish(processing, WebhookProcessing.Status.IGNORED)
    try:
        handler(event.object_id)
    except gateway.GatewayUnavailable as exc:
        _finish(processing, WebhookProcessing.Status.PENDING, error=exc.message)
        raise
    except OperationalError as exc:
        # Contention (a deadlock PostgreSQL broke, a lock wait that timed out): the handler's
        # transaction rolled back whole, so the event is simply tried again.
        _finish(processing, WebhookProcessing.Status.PENDING, error=f"{type(exc).__name__}: {exc}")
        raise
    except Exception as exc:
        logger.exception("processing webhook event %s failed", event.stripe_event_id)
        return _finish(
            processing, WebhookProcessing.Status.FAILED, error=f"{type(exc).__name__}: {exc}"
        )
    return _finish(processing, WebhookProcessing.Status.PROCESSED)


def _finish(processing: WebhookProcessing, status: str, error: str = "") -> str:
    processing.status = status
    processing.attempts += 1
    processing.last_error = error[:2000]
    if status in (WebhookProcessing.Status.PROCESSED, WebhookProcessing.Status.IGNORED):
        processing.processed_at = timezone.now()
        # get_or_create above set .event, so this reads no row.
        WEBHOOK_LAG.observe(
            (processing.processed_at - processing.event.received_at).total_seconds()
        )
    processing.save()
    return status


@transaction.atomic
def webhook_replay(*, event: WebhookEvent, actor: User) -> WebhookProcessing:
    """Process a stored event again (after commit, in the usual task).

    Processing re-reads the object from Stripe and applies only legal transitions, so
    replaying an event that was already applied changes nothing but the attempt count.
    """
    require_finance_staff(
        actor, "billing.replay_webhookevent", "Only finance staff can replay webhook events."
    )
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
