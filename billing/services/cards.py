"""Saved cards: added with a SetupIntent and the card Element, kept on the Stripe customer."""

from dataclasses import dataclass

from django.db import transaction

from accounts.models import Organization, User
from core import audit
from core.errors import NotFound, ServiceError

from .. import gateway
from ..models import BillingAccount
from .accounts import billing_account_ensure, require_billing_manager


@dataclass(frozen=True)
class Card:
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool


def cards_for_account(account: BillingAccount) -> list[Card]:
    result = []
    for method in gateway.payment_methods_list(customer_id=account.stripe_customer_id):
        card = method.card
        result.append(
            Card(
                id=method.id,
                brand=card.brand or "card",
                last4=card.last4,
                exp_month=card.exp_month,
                exp_year=card.exp_year,
                is_default=method.id == account.default_payment_method_id,
            )
        )
    return result


def is_organizations_card(organization: Organization, payment_method_id: str) -> bool:
    """Whether the card is on the organization's Stripe customer (which this never creates).
    Raises gateway.PaymentError when Stripe cannot be asked."""
    account = BillingAccount.objects.filter(organization=organization).first()
    return account is not None and any(
        card.id == payment_method_id for card in cards_for_account(account)
    )


def default_card_for_account(account: BillingAccount) -> Card | None:
    if not account.default_payment_method_id:
        return None
    return next((c for c in cards_for_account(account) if c.is_default), None)


def card_setup_start(*, organization: Organization, actor: User) -> str:
    """A SetupIntent for the card form to confirm; returns its client secret."""
    require_billing_manager(actor=actor, organization=organization)
    account = billing_account_ensure(organization)
    intent = gateway.setup_intent_create(
        customer_id=account.stripe_customer_id,
        metadata={"organization": organization.slug},
        idempotency_key=None,
    )
    return intent.client_secret


def card_setup_finish(
    *, organization: Organization, actor: User, setup_intent_id: str
) -> BillingAccount:
    require_billing_manager(actor=actor, organization=organization)
    if not setup_intent_id.startswith("seti_"):
        raise ServiceError("The card form did not finish. Try again.", code="invalid_setup_intent")
    account = billing_account_ensure(organization)
    intent = gateway.setup_intent_retrieve(setup_intent_id)
    if getattr(intent, "customer", None) not in (None, account.stripe_customer_id):
        raise NotFound("No such card setup.")
    if intent.status != "succeeded" or not intent.payment_method:
        raise ServiceError(
            "The card could not be saved. Check the details and try again.", code="setup_failed"
        )
    method_id = (
        intent.payment_method
        if isinstance(intent.payment_method, str)
        else intent.payment_method.id
    )
    gateway.payment_method_attach(
        payment_method_id=method_id,
        customer_id=account.stripe_customer_id,
        idempotency_key=f"attach:{account.pk}:{method_id}",
    )
    return _set_default(account, method_id, actor, "payment_method.added")


def _owned(account: BillingAccount, payment_method_id: str) -> None:
    """Refuse a card that is not this organization's (a guessed id)."""
    if not any(card.id == payment_method_id for card in cards_for_account(account)):
        raise NotFound("No such card.")


def card_make_default(
    *, organization: Organization, actor: User, payment_method_id: str
) -> BillingAccount:
    require_billing_manager(actor=actor, organization=organization)
    account = billing_account_ensure(organization)
    _owned(account, payment_method_id)
    return _set_default(account, payment_method_id, actor, "payment_method.made_default")


def _set_default(
    account: BillingAccount, method_id: str, actor: User, action: str
) -> BillingAccount:
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().get(pk=account.pk)
        locked.default_payment_method_id = method_id
        locked.save(update_fields=["default_payment_method_id"])
        audit.record(
            action=action,
            actor=actor,
            organization=locked.organization,
            target=locked,
            data={"payment_method": method_id},
        )
    return locked


def card_remove(*, organization: Organization, actor: User, payment_method_id: str) -> None:
    require_billing_manager(actor=actor, organization=organization)
    account = billing_account_ensure(organization)
    _owned(account, payment_method_id)
    gateway.payment_method_detach(payment_method_id=payment_method_id, idempotency_key=None)
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().get(pk=account.pk)
        if locked.default_payment_method_id == payment_method_id:
            locked.default_payment_method_id = ""
            locked.save(update_fields=["default_payment_method_id"])
        audit.record(
            action="payment_method.removed",
            actor=actor,
            organization=organization,
            target=locked,
            data={"payment_method": payment_method_id},
        )
