"""Stripe's credit notes for the localstripe emulator, on the invoices of localstripe_invoices.

As at Stripe: a credit note on an open (or uncollectible) invoice is a pre-payment note and
lowers what is still owed (an invoice owing nothing more is paid); one on a paid invoice is a
post-payment note whose amount is split between the customer's balance (`credit_amount`, which
the customer's next invoice uses up first), a refund of the card payment (`refund_amount`) and
money given back some other way (`out_of_band_amount`).
"""

import time
from typing import Any

from localstripe.errors import UserError
from localstripe.resources import Customer, List, Refund, StripeObject, random_id, store

from .localstripe_invoices import OWING, NetInvoice, announce, bad_request

REASONS = ("duplicate", "fraudulent", "order_change", "product_unsatisfactory")


class CreditNote(StripeObject):
    object = "credit_note"
    _id_prefix = "cn_"

    def __init__(
        self,
        *,
        invoice: NetInvoice,
        amount: int,
        memo: str | None,
        reason: str | None,
        metadata: dict[str, str],
        credit_amount: int,
        refund_amount: int,
        out_of_band_amount: int,
    ) -> None:
        kind = _check(invoice, amount, credit_amount, refund_amount, out_of_band_amount)
        refund = None
        if refund_amount:
            refund = Refund(payment_intent=invoice._payment_intent, amount=refund_amount)
        super().__init__()
        self.invoice = invoice.id
        self.customer = invoice.customer
        self.currency = invoice.currency
        self.amount = self.subtotal = self.total = amount
        self.amount_shipping = self.discount_amount = 0
        self.discount_amounts: list[Any] = []
        self.total_taxes: list[Any] = []
        self.memo = memo
        self.reason = reason
        self.metadata = metadata
        self.type = kind
        self.pre_payment_amount = amount if kind == "pre_payment" else 0
        self.post_payment_amount = amount if kind == "post_payment" else 0
        self.out_of_band_amount = out_of_band_amount or None
        self.refunds = (
            [{"amount_refunded": refund_amount, "refund": refund.id}] if refund is not None else []
        )
        self.customer_balance_transaction = None
        if credit_amount:
            Customer._api_retrieve(invoice.customer).account_balance += credit_amount
            self.customer_balance_transaction = "cbtxn_" + random_id(14)
        self.number = f"{invoice.number}-CN-{len(invoice._credit_notes) + 1:02d}"
        self.status = "issued"
        self.effective_at = self.created
        self.voided_at: int | None = None
        self.pdf = None
        self.lines = List(f"/v1/credit_notes/{self.id}/lines")
        invoice._credit_notes.append(self.id)
        announce("credit_note.created", self)
        if kind == "pre_payment" and invoice.amount_remaining == 0:
            invoice._settled(by_payment=False)  # credited down to nothing: Stripe marks it paid

    def _void(self) -> None:
        invoice = store.get(f"invoice:{self.invoice}")
        if self.status == "void":
            raise bad_request(f"Credit note {self.id} is already void.")
        if self.type != "pre_payment" or invoice is None or invoice.status not in OWING:
            raise bad_request(
                "Only a credit note on an invoice still owed can be voided.",
                code="credit_note_not_voidable",
            )
        self.status = "void"
        self.voided_at = int(time.time())
        announce("credit_note.voided", self)


def _check(invoice: NetInvoice, amount: int, credit: int, refund: int, out_of_band: int) -> str:
    """Stripe's rules for how much may be credited, and where it goes; returns the note's type."""
    if invoice.status in OWING:
        if credit or refund or out_of_band:
            raise bad_request(
                "credit_amount, refund_amount and out_of_band_amount apply to paid invoices; "
                f"invoice {invoice.id} is {invoice.status}.",
                param="credit_amount"
                if credit
                else "refund_amount"
                if refund
                else ("out_of_band_amount"),
            )
        if amount > invoice.amount_remaining:
            raise bad_request(
                f"The credit note amount ({amount}) is greater than what invoice {invoice.id} "
                f"still asks for ({invoice.amount_remaining}).",
                param="amount",
            )
        return "pre_payment"
    if invoice.status != "paid":
        raise bad_request(
            f"Invoice {invoice.id} is {invoice.status}: credit notes go on open, uncollectible "
            "or paid invoices.",
            param="invoice",
        )
    # What settled it: payments (by card or outside Stripe) and the customer's balance it used
    # up when finalized (an invoice that balance paid in full has paid nothing); Stripe credits
    # up to that, less the post-payment notes made before.
    creditable = (
        invoice.amount_paid + invoice._applied_balance - invoice.post_payment_credit_notes_amount
    )
    if amount > creditable:
        raise bad_request(
            f"The credit note amount ({amount}) is greater than what is left to credit on "
            f"invoice {invoice.id} ({creditable}).",
            param="amount",
        )
    if credit + refund + out_of_band != amount:
        raise bad_request(
            f"On a paid invoice the credit note's amount ({amount}) must be split in full "
            f"between credit_amount, refund_amount and out_of_band_amount (given "
            f"{credit + refund + out_of_band}).",
            param="amount",
        )
    if refund and not invoice._payment_intent:
        raise bad_request(
            f"Invoice {invoice.id} was not paid by card: there is no payment to refund.",
            param="refund_amount",
        )
    return "post_payment"


def credit_note(note_id: str) -> CreditNote:
    obj = store.get(f"credit_note:{note_id}")
    if not isinstance(obj, CreditNote):
        raise UserError(404, f"No such credit note: '{note_id}'", {"param": "id"})
    return obj
