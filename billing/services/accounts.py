"""The billing account: its Stripe customer, who may pay or manage it, mail to its contact."""

from typing import Any

from django.db import IntegrityError, transaction
from django.urls import reverse

from accounts.models import Organization, User
from accounts.permissions import Permission, can
from accounts.selectors import membership_for
from core.emails import queue_email
from core.errors import NotAllowed
from core.staff import staff_may

from .. import gateway
from ..models import BillingAccount


def require_may_pay(*, actor: User, organization: Organization) -> None:
    membership = membership_for(user=actor, slug=organization.slug)
    if membership is None:
        raise NotAllowed("Organization not found.", code="not_found")
    if not (
        can(membership.role, Permission.MANAGE_BILLING)
        or can(membership.role, Permission.MANAGE_RESERVATIONS)
    ):
        raise NotAllowed(f"Your role ({membership.get_role_display().lower()}) cannot pay.")


def is_billing_manager(actor: User, organization: Organization) -> bool:
    membership = membership_for(user=actor, slug=organization.slug)
    return membership is not None and can(membership.role, Permission.MANAGE_BILLING)


def require_billing_manager(*, actor: User, organization: Organization) -> None:
    membership = membership_for(user=actor, slug=organization.slug)
    if membership is None or not can(membership.role, Permission.MANAGE_BILLING):
        raise NotAllowed("Only owners, admins and billing members manage payment methods.")


def require_finance_staff(actor: User, permission: str, message: str) -> None:
    if not staff_may(actor, permission):
        raise NotAllowed(message)


def billing_account_ensure(organization: Organization) -> BillingAccount:
    """The organization's Stripe customer, created on first need (once, even when racing)."""
    existing = BillingAccount.objects.filter(organization=organization).first()
    if existing is not None:
        return existing
    customer = gateway.customer_create(
        name=organization.legal_name or organization.name,
        email=organization.billing_email,
        metadata={"organization": organization.slug, "organization_id": str(organization.pk)},
        idempotency_key=f"customer:{organization.pk}",
    )
    try:
        with transaction.atomic():
            return BillingAccount.objects.create(
                organization=organization, stripe_customer_id=customer.id
            )
    except IntegrityError:  # a concurrent request stored it first (same key, same customer)
        return BillingAccount.objects.get(organization=organization)


def billing_email_queue(organization: Organization, template: str, **context: Any) -> None:
    context.setdefault("organization", organization)
    context["url"] = reverse("billing", args=[organization.slug])
    queue_email(to=organization.billing_email, template=template, context=context)
