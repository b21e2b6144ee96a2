"""Credit on invoice terms: what an organization owes and has committed, against its limit.

Billing keeps the ledger, so it answers how much credit is in use: the function the setting
CREDIT_USED_HOOK names. The apps below billing (capacity confirms reservations on invoice terms)
ask here without importing it; RESERVATIONS_REFUSED_HOOK likewise says when an organization may
not reserve more (money it owes long overdue, a dispute lost).
"""

from decimal import Decimal

from core.errors import Conflict
from core.hooks import hook
from core.money import format_money

from .models import Organization


class CreditLimitExceeded(Conflict):
    default_code = "credit_limit_exceeded"


class ReservationsRefused(Conflict):
    default_code = "reservations_refused"


def require_reservations_allowed(organization: Organization) -> None:
    """Refuse a new block while billing says the organization may not buy more (an invoice
    long overdue, one written off, a dispute lost): RESERVATIONS_REFUSED_HOOK's reason."""
    refused: str | None = hook("RESERVATIONS_REFUSED_HOOK")(organization)
    if refused:
        raise ReservationsRefused(refused)


def credit_used(organization: Organization) -> Decimal:
    used: Decimal = hook("CREDIT_USED_HOOK")(organization)
    return used


def require_credit(*, organization: Organization, amount: Decimal) -> None:
    """Refuse confirming `amount` more on invoice terms past the credit limit. Call with the
    organization's row locked (accounts.services.organizations.organization_lock) in the
    transaction that confirms, so two confirmations cannot both fit in the same headroom."""
    if not organization.on_invoice_terms:
        return
    used = credit_used(organization)
    if used + amount > organization.credit_limit:
        left = max(organization.credit_limit - used, Decimal("0.00"))
        currency = organization.currency
        raise CreditLimitExceeded(
            f"This would take {organization.name} past its credit limit of "
            f"{format_money(organization.credit_limit, currency)}: "
            f"{format_money(used, currency)} is owed or committed, so "
            f"{format_money(left, currency)} is left and this costs "
            f"{format_money(amount, currency)}. Pay an open invoice first, or ask your "
            "account manager to raise the limit.",
        )
