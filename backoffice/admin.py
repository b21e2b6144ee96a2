"""The staff site's pages, registered by audience: Django's admin autodiscovers this module."""

from . import accounts_admin, audit_log  # noqa: F401
from .finance import (  # noqa: F401
    billing_accounts,
    flags,
    invoices,
    ledger,
    payments,
    sla_credits,
    usage,
    webhooks,
)
from .operations import catalog, incidents, inventory, reservations  # noqa: F401
from .sales import organizations, rates  # noqa: F401
