"""Sales sets an organization's payment terms: invoice (net days, credit limit) or card.

Here rather than in accounts because the credit limit is checked against the organization's
balance, which is billing's ledger. The organization row is locked first, so two staff members
changing terms at once queue, and the write itself is the accounts service. After the commit
the organization's cached API keys are dropped: the key cache holds the organization's row with
the key, and the next API request must see the new terms, not the old ones for a few seconds.
"""

from decimal import Decimal, InvalidOperation

from django.db import transaction

from accounts.api_keys.authentication import api_key_cache_forget
from accounts.models import Organization, User
from accounts.services.organizations import organization_lock, organization_terms_write
from core.errors import ServiceError
from core.money import format_money
from core.staff import require_staff_permission

from .. import selectors

TERMS_PERMISSION = "accounts.approve_terms"


def _amount(value: object) -> Decimal:
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ServiceError(
            "Give the credit limit as an amount, e.g. 25000.00.", param="credit_limit"
        ) from exc
    if not amount.is_finite():
        raise ServiceError(
            "Give the credit limit as an amount, e.g. 25000.00.", param="credit_limit"
        )
    return amount


@transaction.atomic
def invoice_terms_approve(
    *,
    organization: Organization,
    actor: User,
    credit_limit: object,
    payment_days: int,
    reason: str = "",
) -> Organization:
    """Put the organization on invoice terms (net `payment_days`) with `credit_limit`, or change
    the limit and days of one already on them. The limit may not be below what the organization
    owes now: that would put it over its limit the moment it is approved."""
    require_staff_permission(actor, TERMS_PERMISSION, "approve payment terms")
    limit = _amount(credit_limit)
    locked = organization_lock(organization)
    owed = selectors.balance_for_org(locked)
    if limit < owed:
        raise ServiceError(
            f"The credit limit ({format_money(limit, locked.currency)}) is below what "
            f"{locked.name} owes now ({format_money(owed, locked.currency)}). Give a limit of "
            "at least the balance.",
            code="credit_limit_below_balance",
            param="credit_limit",
        )
    changed = organization_terms_write(
        organization=locked,
        actor=actor,
        payment_terms=Organization.PaymentTerms.INVOICE,
        payment_days=payment_days,
        credit_limit=limit,
        reason=reason,
    )
    _forget_cached_keys_after_commit(changed)
    return changed


@transaction.atomic
def card_terms_set(*, organization: Organization, actor: User, reason: str = "") -> Organization:
    """Back to paying upfront by card: the credit line closes (limit 0); payment days keep their
    value for a later approval. Reservations already confirmed on invoice stay invoiced."""
    require_staff_permission(actor, TERMS_PERMISSION, "approve payment terms")
    locked = organization_lock(organization)
    changed = organization_terms_write(
        organization=locked,
        actor=actor,
        payment_terms=Organization.PaymentTerms.CARD,
        payment_days=locked.payment_days,
        credit_limit=Decimal("0.00"),
        reason=reason,
    )
    _forget_cached_keys_after_commit(changed)
    return changed


def _forget_cached_keys_after_commit(organization: Organization) -> None:
    pk = organization.pk
    transaction.on_commit(lambda: api_key_cache_forget(organization_id=pk))
