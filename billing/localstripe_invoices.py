"""Stripe's standalone invoices for the localstripe emulator: net-N (send_invoice) invoices,
items on a given invoice, finalizing, sending, paying, voiding, marking uncollectible, and the
invoice payments that say what paid them.

localstripe's own `Invoice` only follows subscriptions. These objects live in localstripe's
store beside its own (so the wrapper's --state file keeps them and `DELETE /_config/data`
wipes them), and they announce themselves through localstripe's webhooks, signed like every
other event. Field names and state moves follow Stripe's API: draft -> open -> paid, void or
uncollectible (an uncollectible invoice can still be paid or voided). Every method is private
(underscored) because localstripe exports every public attribute of an object as JSON.
"""

import time
from typing import Any

from localstripe.errors import UserError
from localstripe.resources import (
    Customer,
    Event,
    List,
    PaymentIntent,
    PaymentMethod,
    StripeObject,
    fingerprint,
    store,
)
from localstripe.webhooks import schedule_webhook

DAY = 24 * 3600
OWING = ("open", "uncollectible")  # finalized, not settled: can be paid, voided, credited


def bad_request(message: str, param: str | None = None, code: str | None = None) -> Any:
    """A 400 shaped like Stripe's invalid_request_error."""
    contents: dict[str, str] = {}
    if param:
        contents["param"] = param
    if code:
        contents["code"] = code
    return UserError(400, message, contents)


def announce(event_type: str, obj: Any) -> None:
    """A webhook event through localstripe (stored as an event, delivered signed)."""
    schedule_webhook(Event(event_type, obj))


class NetInvoice(StripeObject):
    object = "invoice"
    _id_prefix = "in_"

    def __init__(
        self,
        *,
        customer: str,
        collection_method: str,
        currency: str,
        days_until_due: int | None,
        due_date: int | None,
        description: str | None,
        metadata: dict[str, str],
        auto_advance: bool,
        default_payment_method: str | None,
    ) -> None:
        account = Customer._api_retrieve(customer)  # 404 before anything is stored
        super().__init__()
        self.customer = customer
        self.customer_email = account.email
        self.customer_name = account.name
        self.collection_method = collection_method
        self.currency = currency
        self.description = description
        self.metadata = metadata
        self.auto_advance = auto_advance
        self.default_payment_method = default_payment_method
        self.number: str | None = None
        self.status = "draft"
        self.due_date = due_date or (
            self.created + days_until_due * DAY if days_until_due is not None else None
        )
        self.hosted_invoice_url: str | None = None
        self.webhooks_delivered_at: int | None = None
        self.invoice_pdf = None
        self.lines = List(f"/v1/invoices/{self.id}/lines", limit=100)
        self.amount_paid = 0
        self.amount_overpaid = 0
        self.paid_out_of_band = False
        self.attempt_count = 0
        self.attempted = False
        self.starting_balance = 0
        self.ending_balance: int | None = None
        self.effective_at: int | None = None
        self.period_start = self.period_end = self.created
        self.status_transitions: dict[str, int | None] = {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        }
        self.parent = None
        self.total_discount_amounts: list[Any] = []
        self.total_taxes: list[Any] = []
        self._days_until_due = days_until_due
        self._fixed_due_date = due_date
        self._applied_balance = 0  # customer credit used up when it was finalized
        self._credit_notes: list[str] = []
        self._payment_intent: str | None = None
        announce("invoice.created", self)

    # --- Amounts, as Stripe computes them -----------------------------------------------------
    @property
    def subtotal(self) -> int:
        return sum(line.amount for line in self.lines._list)

    @property
    def total(self) -> int:
        return self.subtotal  # no taxes or discounts here

    def _notes(self, kind: str) -> int:
        notes = (store.get(f"credit_note:{note_id}") for note_id in self._credit_notes)
        return sum(
            n.amount for n in notes if n is not None and n.status != "void" and n.type == kind
        )

    @property
    def pre_payment_credit_notes_amount(self) -> int:
        return self._notes("pre_payment")

    @property
    def post_payment_credit_notes_amount(self) -> int:
        return self._notes("post_payment")

    @property
    def amount_due(self) -> int:
        return max(0, self.total - self._applied_balance - self.pre_payment_credit_notes_amount)

    @property
    def amount_remaining(self) -> int:
        if self.status == "void":
            return 0
        return max(0, self.amount_due - self.amount_paid)

    # --- Building a draft ---------------------------------------------------------------------
    def _check_item(self, customer: str, currency: str) -> None:
        """Stripe's rules for an item on this invoice, checked before the item is stored."""
        if self.status != "draft":
            raise bad_request(
                f"Invoice {self.id} is {self.status}: items go on draft invoices only.",
                param="invoice",
                code="invoice_not_editable",
            )
        if customer != self.customer:
            raise bad_request(
                f"The invoice belongs to {self.customer}, the item to {customer}.",
                param="customer",
            )
        if currency != self.currency:
            raise bad_request(
                f"The invoice is in {self.currency}; the item cannot be in {currency}.",
                param="currency",
            )

    def _update(self, **data: Any) -> None:
        """Metadata at any time; the rest while it is a draft (as Stripe allows)."""
        metadata = data.pop("metadata", None)
        if data and self.status != "draft":
            raise bad_request(
                f"Invoice {self.id} is {self.status}: only its metadata can change.",
                code="invoice_not_editable",
            )
        for key, value in data.items():
            if key == "days_until_due":
                self._days_until_due = value
                self.due_date = self.created + value * DAY
            else:
                setattr(self, key, value)
        if metadata:
            self.metadata = {**self.metadata, **metadata}
            self.metadata = {k: v for k, v in self.metadata.items() if v != ""}

    # --- State moves ----------------------------------------------------------------------------
    def _finalize(self, origin: str) -> None:
        if self.status != "draft":
            raise bad_request(
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
        now = int(time.time())
        mine = [
            obj
            for key, obj in store.items()
            if key.startswith("invoice:") and getattr(obj, "customer", None) == self.customer
        ]
        issued = sum(1 for obj in mine if getattr(obj, "number", None))
        self.number = f"{fingerprint(self.customer)[:8].upper()}-{issued + 1:04d}"
        self.status = "open"
        self.status_transitions["finalized_at"] = self.effective_at = now
        if self.collection_method == "send_invoice":
            self.due_date = self._fixed_due_date or now + (self._days_until_due or 0) * DAY
        self.hosted_invoice_url = f"{origin}/i/{self.id}"
        # The customer's credit (what credit notes put on their balance) pays first.
        account = Customer._api_retrieve(self.customer)
        credit = max(0, account.account_balance)  # localstripe keeps credit positive
        applied = min(credit, self.total)
        account.account_balance -= applied
        self._applied_balance = applied
        self.starting_balance, self.ending_balance = -credit, -(credit - applied)
        announce("invoice.finalized", self)
        if self.amount_due == 0:
            self._settled(by_payment=False)

    def _send(self) -> None:
        if self.collection_method != "send_invoice":
            raise bad_request(
                "You can only manually send an invoice if its collection method is 'send_invoice'."
            )
        if self.status in ("draft", "void"):
            raise bad_request(
                f"Invoice {self.id} is {self.status}: only a finalized invoice can be sent.",
                code="invoice_not_editable",
            )
        self.webhooks_delivered_at = int(time.time())
        announce("invoice.sent", self)

    def _pay(self, *, origin: str, paid_out_of_band: bool, payment_method: str | None) -> None:
        if self.status == "draft":
            self._finalize(origin)  # Stripe finalizes a draft it is asked to pay
        if self.status == "paid":
            raise bad_request("Invoice is already paid.", code="invoice_already_paid")
        if self.status == "void":
            raise bad_request(
                "This invoice is void and can no longer be paid.", code="invoice_not_editable"
            )
        if self.amount_remaining == 0:
            self._settled(by_payment=False)
            return
        if paid_out_of_band:
            self.paid_out_of_band = True
            self.amount_paid += self.amount_remaining
            self._settled(by_payment=False)
            return
        pending = self._payment_intent and PaymentIntent._api_retrieve(self._payment_intent)
        if pending and pending.status in ("processing", "requires_action"):
            raise bad_request(
                f"A payment of this invoice is already in progress ({pending.id}).",
                code="invoice_payment_intent_requires_action",
            )
        method = PaymentMethod._api_retrieve(self._payment_method_id(payment_method))
        if method.customer != self.customer:
            raise bad_request(
                f"{method.id} is not attached to {self.customer}.", param="payment_method"
            )
        intent = PaymentIntent(
            amount=self.amount_remaining,
            currency=self.currency,
            customer=self.customer,
            payment_method=method.id,
        )
        intent.invoice = self.id  # localstripe calls back _on_payment_success / _failure
        self._payment_intent = intent.id
        self.attempted = True
        self.attempt_count += 1
        intent._confirm(on_failure_now=intent._report_failure)  # a decline raises a 402
        if intent.status == "requires_action":
            raise UserError(
                402,
                "This payment needs the customer to authenticate (3-D Secure).",
                {"code": "invoice_payment_intent_requires_action", "payment_intent": intent.id},
            )

    def _payment_method_id(self, given: str | None) -> str:
        if given:
            return given
        if self.default_payment_method:
            return str(self.default_payment_method)
        account = Customer._api_retrieve(self.customer)
        default = (account.invoice_settings or {}).get("default_payment_method")
        if default:
            return str(default)
        if account.default_source:
            return str(account.default_source)
        raise bad_request(
            f"{self.customer} has no default payment method: give payment_method, or "
            "paid_out_of_band=true.",
            param="payment_method",
            code="invoice_no_payment_method_types",
        )

    def _on_payment_success(self) -> None:
        """localstripe's PaymentIntent calls this once its charge succeeded."""
        intent = PaymentIntent._api_retrieve(self._payment_intent)
        if self.status == "void":
            return  # voided while the charge was on its way; Stripe would refund it
        self.amount_paid += intent.amount
        InvoicePayment(invoice=self, amount=intent.amount, payment_intent=intent.id)
        self._settled(by_payment=True)

    def _on_payment_failure_now(self) -> None:
        announce("invoice.payment_failed", self)

    def _on_payment_failure_later(self) -> None:
        announce("invoice.payment_failed", self)

    def _settled(self, *, by_payment: bool) -> None:
        self.status = "paid"
        self.status_transitions["paid_at"] = int(time.time())
        announce("invoice.paid", self)
        if by_payment:
            announce("invoice.payment_succeeded", self)

    def _void(self) -> None:
        if self.status not in OWING:
            raise bad_request(
                f"Invoice {self.id} is {self.status}: only open or uncollectible invoices can "
                "be voided.",
                code="invoice_not_editable",
            )
        if self._payment_intent:
            intent = PaymentIntent._api_retrieve(self._payment_intent)
            if intent.status == "requires_action":
                PaymentIntent._api_cancel(intent.id)
        self.status = "void"
        self.status_transitions["voided_at"] = int(time.time())
        announce("invoice.voided", self)

    def _mark_uncollectible(self) -> None:
        if self.status != "open":
            raise bad_request(
                f"Invoice {self.id} is {self.status}: only open invoices can be marked "
                "uncollectible.",
                code="invoice_not_editable",
            )
        self.status = "uncollectible"
        self.status_transitions["marked_uncollectible_at"] = int(time.time())
        announce("invoice.marked_uncollectible", self)


class InvoicePayment(StripeObject):
    """What paid an invoice (Stripe's API since 2025-03-31 names it here, not on the charge)."""

    object = "invoice_payment"
    _id_prefix = "inpay_"

    def __init__(self, *, invoice: NetInvoice, amount: int, payment_intent: str) -> None:
        super().__init__()
        self.invoice = invoice.id
        self.amount_paid = self.amount_requested = amount
        self.currency = invoice.currency
        self.is_default = True
        self.payment = {"type": "payment_intent", "payment_intent": payment_intent}
        self.status = "paid"
        self.status_transitions = {"canceled_at": None, "paid_at": self.created}


def net_invoice(invoice_id: str) -> NetInvoice:
    """The invoice, or the 404 Stripe gives (localstripe's subscription invoices do not move
    through these routes)."""
    obj = store.get(f"invoice:{invoice_id}")
    if not isinstance(obj, NetInvoice):
        raise UserError(404, f"No such invoice: '{invoice_id}'", {"param": "id"})
    return obj
