"""The only module that talks to Stripe.

Every call has a timeout; every write carries an idempotency key derived from our own ids, so a
retried request never charges or refunds twice; Stripe's errors become `PaymentError` with a
message a customer can read. `STRIPE_API_BASE` points the client at localstripe in development
and tests.
"""

import logging
from collections.abc import Mapping
from typing import Any

import stripe
from django.conf import settings

from core.errors import ServiceError

logger = logging.getLogger(__name__)


class PaymentError(ServiceError):
    """Stripe refused or could not be reached; `message` is safe to show the customer."""

    status = 402
    default_code = "payment_failed"

    def __init__(self, message: str, *, code: str | None = None, decline_code: str = "") -> None:
        super().__init__(message, code=code)
        self.decline_code = decline_code


class GatewayUnavailable(PaymentError):
    """A network failure or Stripe outage: transient, worth retrying."""

    status = 503
    default_code = "payment_provider_unavailable"


class WebhookSignatureError(Exception):
    pass


def _client() -> stripe.StripeClient:
    if not settings.STRIPE_SECRET_KEY:
        raise GatewayUnavailable("Payments are not configured.", code="stripe_not_configured")
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None,
        http_client=stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS),
        max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
    )


def _translate(exc: stripe.StripeError) -> PaymentError:
    if isinstance(exc, stripe.CardError):
        return PaymentError(
            exc.user_message or "Your card was declined.",
            code=exc.code or "card_declined",
            decline_code=getattr(exc, "decline_code", None) or "",
        )
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        logger.warning("Stripe unreachable: %s", exc)
        return GatewayUnavailable(
            "The payment provider is not reachable right now. Try again shortly."
        )
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        logger.error("Stripe rejected our credentials: %s", exc)
        return GatewayUnavailable(
            "Payments are not available right now.", code="stripe_misconfigured"
        )
    logger.warning("Stripe error %s: %s", type(exc).__name__, exc)
    if isinstance(exc, stripe.APIError):
        return GatewayUnavailable("The payment provider had a problem. Try again shortly.")
    return PaymentError(
        "The payment could not be processed.", code=getattr(exc, "code", None) or "stripe_error"
    )


def _call(operation: Any, params: Mapping[str, Any], idempotency_key: str | None = None) -> Any:
    options = {"idempotency_key": idempotency_key} if idempotency_key else {}
    try:
        return (
            operation(params=dict(params), options=options)
            if options
            else operation(params=dict(params))
        )
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def _read(operation: Any, object_id: str) -> Any:
    try:
        return operation(object_id)
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def as_dict(value: Any) -> dict[str, Any]:
    """A Stripe object (its metadata, say) as a plain dict; None as an empty one."""
    return value.to_dict() if hasattr(value, "to_dict") else dict(value or {})


# --- Customers and payment methods -----------------------------------------------------------
def customer_create(
    *, name: str, email: str, metadata: dict[str, str], idempotency_key: str
) -> Any:
    return _call(
        _client().v1.customers.create,
        {"name": name, "email": email, "metadata": metadata},
        idempotency_key,
    )


def payment_methods_list(*, customer_id: str) -> list[Any]:
    result = _call(
        _client().v1.payment_methods.list, {"customer": customer_id, "type": "card", "limit": 20}
    )
    return list(result.data)


def payment_method_attach(*, payment_method_id: str, customer_id: str, idempotency_key: str) -> Any:
    client = _client()
    return _call(
        lambda params, options=None: client.v1.payment_methods.attach(
            payment_method_id, params, options
        ),
        {"customer": customer_id},
        idempotency_key,
    )


def payment_method_retrieve(payment_method_id: str) -> Any:
    return _read(_client().v1.payment_methods.retrieve, payment_method_id)


def payment_method_detach(*, payment_method_id: str, idempotency_key: str | None) -> Any:
    return _call(
        lambda params, options=None: _client().v1.payment_methods.detach(
            payment_method_id, params, options
        ),
        {},
        idempotency_key,
    )


def setup_intent_create(
    *, customer_id: str, metadata: dict[str, str], idempotency_key: str | None
) -> Any:
    return _call(
        _client().v1.setup_intents.create,
        {
            "customer": customer_id,
            "usage": "off_session",
            "payment_method_types": ["card"],
            "metadata": metadata,
        },
        idempotency_key,
    )


def setup_intent_retrieve(setup_intent_id: str) -> Any:
    return _read(_client().v1.setup_intents.retrieve, setup_intent_id)


# --- Payments ---------------------------------------------------------------------------------
def payment_intent_create(
    *,
    amount_minor: int,
    currency: str,
    customer_id: str,
    metadata: dict[str, str],
    idempotency_key: str,
    payment_method_id: str | None = None,
    off_session: bool = False,
) -> Any:
    """Create a card PaymentIntent; with a saved `payment_method_id` it is confirmed at once."""
    params: dict[str, Any] = {
        "amount": amount_minor,
        "currency": currency,
        "customer": customer_id,
        "metadata": metadata,
        "payment_method_types": ["card"],
    }
    if payment_method_id:
        params.update(payment_method=payment_method_id, confirm=True)
        if off_session:
            params["off_session"] = True
    return _call(_client().v1.payment_intents.create, params, idempotency_key)


def payment_intent_retrieve(payment_intent_id: str) -> Any:
    return _read(_client().v1.payment_intents.retrieve, payment_intent_id)


def payment_intent_cancel(*, payment_intent_id: str, idempotency_key: str) -> Any:
    return _call(
        lambda params, options=None: _client().v1.payment_intents.cancel(
            payment_intent_id, params, options
        ),
        {},
        idempotency_key,
    )


def charge_retrieve(charge_id: str) -> Any:
    return _read(_client().v1.charges.retrieve, charge_id)


def refund_create(
    *, payment_intent_id: str, amount_minor: int, metadata: dict[str, str], idempotency_key: str
) -> Any:
    return _call(
        _client().v1.refunds.create,
        {"payment_intent": payment_intent_id, "amount": amount_minor, "metadata": metadata},
        idempotency_key,
    )


def refunds_list(*, payment_intent_id: str) -> list[Any]:
    return list(
        _call(_client().v1.refunds.list, {"payment_intent": payment_intent_id, "limit": 100}).data
    )


def payment_intents_list(*, created_after: int) -> list[Any]:
    """PaymentIntents created since a Unix time, for reconciliation. Stripe lists newest first,
    so paging stops after a full page of older ones instead of walking all history."""
    try:
        page = _client().v1.payment_intents.list(params={"limit": 100})
        result, older = [], 0
        for intent in page.auto_paging_iter():
            if intent.created >= created_after:
                result.append(intent)
                continue
            older += 1
            if older >= 100:
                break
        return result
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


# --- Reading the books back (check_books) ---------------------------------------------------------
class NotOffered(PaymentError):
    """This Stripe has no such API at all (a stand-in without invoices or credit notes): what
    it would have told us cannot be checked, which is not the same as finding nothing."""

    status = 501
    default_code = "stripe_api_not_offered"


def _every(operation: Any, params: Mapping[str, Any]) -> list[Any]:
    """Every object of a list call, page by page (reads carry no idempotency key)."""
    try:
        return list(operation(params={**params, "limit": 100}).auto_paging_iter())
    except stripe.APIError as exc:
        # Real Stripe answers JSON even for a 404; a bare 404 means the route does not exist.
        if exc.http_status == 404:
            raise NotOffered("This Stripe does not offer that API.") from exc
        raise _translate(exc) from exc
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def charges_list(*, customer_id: str) -> list[Any]:
    """Every charge Stripe made on a customer: what it took (captured) and gave back (refunded)."""
    return _every(_client().v1.charges.list, {"customer": customer_id})


def invoices_list(*, customer_id: str) -> list[Any]:
    return _every(_client().v1.invoices.list, {"customer": customer_id})


def invoice_payments_list(*, invoice_id: str) -> list[Any]:
    """What paid an invoice (each names its PaymentIntent or charge)."""
    return _every(_client().v1.invoice_payments.list, {"invoice": invoice_id})


def payment_intent_paid_an_invoice(intent: Any) -> bool:
    """Whether a PaymentIntent paid one of our invoices (its money is the invoice's business).
    Older API versions name the invoice on the intent; newer ones only in invoice payments."""
    if getattr(intent, "invoice", None):
        return True
    found = _call(
        _client().v1.invoice_payments.list,
        {"payment": {"type": "payment_intent", "payment_intent": intent.id}, "limit": 1},
    )
    return bool(found.data)


def invoicing_offered() -> bool:
    """Whether this Stripe has invoices and credit notes to read back (Stripe and our
    localstripe wrapper have; a bare emulator may not)."""
    try:
        _client().v1.credit_notes.list(params={"limit": 1})  # one page, not every note
    except stripe.APIError as exc:
        if exc.http_status == 404:
            return False
        raise _translate(exc) from exc
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return True


def credit_notes_list(*, invoice_id: str) -> list[Any]:
    """An invoice's credit notes; NotOffered where this Stripe has no credit notes."""
    return _every(_client().v1.credit_notes.list, {"invoice": invoice_id})


# --- Invoices (send_invoice, net-N) ------------------------------------------------------------
def invoice_create(
    *,
    customer_id: str,
    amount_minor: int,
    currency: str,
    description: str,
    days_until_due: int,
    metadata: dict[str, str],
    idempotency_key: str,
) -> Any:
    """Create, finalize and send a net-N invoice with one line for `amount_minor`."""
    client = _client()
    invoice = _call(
        client.v1.invoices.create,
        {
            "customer": customer_id,
            "collection_method": "send_invoice",
            "days_until_due": days_until_due,
            "currency": currency,
            "description": description,
            "metadata": metadata,
            "auto_advance": False,
        },
        f"{idempotency_key}:invoice",
    )
    _call(
        client.v1.invoice_items.create,
        {
            "customer": customer_id,
            "invoice": invoice.id,
            "amount": amount_minor,
            "currency": currency,
            "description": description,
            "metadata": metadata,
        },
        f"{idempotency_key}:item",
    )
    _call(
        lambda params, options=None: client.v1.invoices.finalize_invoice(
            invoice.id, params, options
        ),
        {},
        f"{idempotency_key}:finalize",
    )
    return _call(
        lambda params, options=None: client.v1.invoices.send_invoice(invoice.id, params, options),
        {},
        f"{idempotency_key}:send",
    )


def invoice_retrieve(invoice_id: str) -> Any:
    return _read(_client().v1.invoices.retrieve, invoice_id)


def invoice_void(*, invoice_id: str, idempotency_key: str) -> Any:
    """Void an open invoice: nothing is owed on it any more."""
    client = _client()
    return _call(
        lambda params, options=None: client.v1.invoices.void_invoice(invoice_id, params, options),
        {},
        idempotency_key,
    )


def invoice_pay_out_of_band(*, invoice_id: str, idempotency_key: str) -> Any:
    """Mark an open invoice paid outside Stripe (a bank transfer the customer made)."""
    client = _client()
    return _call(
        lambda params, options=None: client.v1.invoices.pay(invoice_id, params, options),
        {"paid_out_of_band": True},
        idempotency_key,
    )


def credit_note_create(
    *, invoice_id: str, amount_minor: int, memo: str, paid: bool, idempotency_key: str
) -> Any:
    """Credit part of an invoice: an open one owes that much less; on a paid one the amount
    goes to the customer's Stripe balance, which the next invoice uses up first."""
    params: dict[str, Any] = {"invoice": invoice_id, "amount": amount_minor, "memo": memo}
    if paid:
        params["credit_amount"] = amount_minor
    return _call(_client().v1.credit_notes.create, params, idempotency_key)


def dispute_retrieve(dispute_id: str) -> Any:
    return _read(_client().v1.disputes.retrieve, dispute_id)


# --- Webhooks ----------------------------------------------------------------------------------
def verify_webhook(payload: bytes, signature: str) -> None:
    """Check Stripe's signature over the raw body and its timestamp tolerance; the caller parses
    the body itself (building Stripe's event object would parse it a second time)."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise WebhookSignatureError("No webhook secret is configured.")
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"),
            signature,
            settings.STRIPE_WEBHOOK_SECRET,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise WebhookSignatureError(str(exc)) from exc


def meter_event(
    *, event_name: str, customer_id: str, value: int, timestamp: int, identifier: str
) -> Any:
    """A Billing Meter event; Stripe ignores a second one with the same identifier."""
    return _call(
        _client().v1.billing.meter_events.create,
        {
            "event_name": event_name,
            "payload": {"stripe_customer_id": customer_id, "value": str(value)},
            "timestamp": timestamp,
            "identifier": identifier,
        },
        f"meter:{identifier}",
    )
