"""Billing's models, one module per subject; every model is importable from here."""

from .invoices import Invoice, InvoiceReminder
from .ledger import FinanceFlag, LedgerEntry
from .payments import BillingAccount, Payment, Refund, new_payment_id, new_refund_id
from .sla import SlaCredit, new_sla_credit_id
from .usage import ModelPrice, UsageEvent, UsageHour
from .webhooks import WebhookEvent, WebhookProcessing

__all__ = [
    "BillingAccount",
    "FinanceFlag",
    "Invoice",
    "InvoiceReminder",
    "LedgerEntry",
    "ModelPrice",
    "Payment",
    "Refund",
    "SlaCredit",
    "UsageEvent",
    "UsageHour",
    "WebhookEvent",
    "WebhookProcessing",
    "new_payment_id",
    "new_refund_id",
    "new_sla_credit_id",
]
