"""Staff decisions on an organization: suspend and reactivate, invoice terms, review."""

from decimal import Decimal

import pytest
from django.core.cache import cache
from django.test import Client

from accounts import api_keys, guards
from accounts.api_keys.authentication import KeyRefused, api_key_authenticate
from accounts.models import Organization
from accounts.permissions import Role
from accounts.services import organizations
from backoffice.roles import FINANCE, OPERATIONS, SALES
from billing.models import LedgerEntry
from billing.services import terms
from core.errors import Conflict, NotAllowed, ServiceError
from core.models import AuditEvent
from tests.backoffice.conftest import make_staff
from tests.conftest import client_for, member_of

pytestmark = pytest.mark.django_db

STATE = ["status", "suspended_reason", "payment_terms", "payment_days", "credit_limit"]


def state(org: Organization) -> dict:
    return Organization.objects.filter(pk=org.pk).values(*STATE, "reviewed_at").get()


def owe(org: Organization, amount: str) -> None:
    LedgerEntry.objects.create(
        organization=org, kind="charge", amount=Decimal(amount), currency="usd", description="x"
    )


# --- Suspension -------------------------------------------------------------------------------
def test_suspending_records_the_reason_and_blocks_reserving(organization):
    sales = make_staff(SALES)
    organizations.organization_suspend(
        organization=organization, actor=sales, reason="  Invoice INV-7 unpaid for 60 days. "
    )
    assert state(organization) | {"reviewed_at": None} == {
        "status": "suspended",
        "suspended_reason": "Invoice INV-7 unpaid for 60 days.",
        "payment_terms": "card",
        "payment_days": 30,
        "credit_limit": Decimal("0.00"),
        "reviewed_at": None,
    }
    event = AuditEvent.objects.get(action="organization.suspended")
    assert (event.actor, event.actor_kind, event.organization_id, event.reason) == (
        sales,
        "staff",
        organization.pk,
        "Invoice INV-7 unpaid for 60 days.",
    )
    organization.refresh_from_db()
    with pytest.raises(NotAllowed) as refused:
        guards.require_active_organization(organization)
    assert refused.value.message == (
        f"{organization.name} is suspended: Invoice INV-7 unpaid for 60 days. Contact "
        "support@hyperblock.local to reactivate it."
    )


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("", "Give a reason: the customer and the audit log see it."),
        ("   ", "Give a reason: the customer and the audit log see it."),
        ("x" * 501, "Keep the reason to 500 characters or fewer."),
    ],
)
def test_a_suspension_needs_a_reason(organization, reason, message):
    before = state(organization)
    with pytest.raises(ServiceError) as refused:
        organizations.organization_suspend(
            organization=organization, actor=make_staff(SALES), reason=reason
        )
    assert (refused.value.message, refused.value.param) == (message, "reason")
    assert state(organization) == before
    assert AuditEvent.objects.filter(action="organization.suspended").count() == 0


@pytest.mark.parametrize("group", [OPERATIONS, FINANCE, None])
def test_only_sales_suspends(organization, group):
    before = state(organization)
    with pytest.raises(NotAllowed) as refused:
        organizations.organization_suspend(
            organization=organization, actor=make_staff(group), reason="Fraud"
        )
    assert refused.value.message == "You are not allowed to suspend or reactivate organizations."
    assert state(organization) == before


def test_a_customer_owner_cannot_suspend_even_their_own_organization(organization, owner):
    with pytest.raises(NotAllowed):
        organizations.organization_suspend(organization=organization, actor=owner, reason="Fraud")
    assert state(organization)["status"] == "active"


def test_suspending_twice_and_reactivating_an_active_organization_are_refused(organization):
    sales = make_staff(SALES)
    with pytest.raises(Conflict, match="is not suspended"):
        organizations.organization_reactivate(organization=organization, actor=sales)
    organizations.organization_suspend(organization=organization, actor=sales, reason="Fraud")
    with pytest.raises(Conflict, match="is already suspended"):
        organizations.organization_suspend(organization=organization, actor=sales, reason="Again")
    assert state(organization)["suspended_reason"] == "Fraud"
    organizations.organization_reactivate(organization=organization, actor=sales, reason="Paid")
    assert (state(organization)["status"], state(organization)["suspended_reason"]) == (
        "active",
        "",
    )
    event = AuditEvent.objects.get(action="organization.reactivated")
    assert (event.data, event.reason) == ({"suspended_reason": "Fraud"}, "Paid")


def test_a_suspended_organizations_api_key_is_refused_at_once(
    organization, owner, django_capture_on_commit_callbacks
):
    _, raw = api_keys.api_key_create(
        organization=organization, actor=owner, name="ci", scopes=["reservations:read"]
    )
    api = Client(headers={"authorization": f"Bearer {raw}"})
    assert api.get("/api/v1/reservations/").status_code == 200  # now cached
    with django_capture_on_commit_callbacks(execute=True):
        organizations.organization_suspend(
            organization=organization, actor=make_staff(SALES), reason="Card fraud"
        )
    response = api.get("/api/v1/reservations/")
    assert (response.status_code, response.json()) == (
        403,
        {
            "error": {
                "type": "permission_denied",
                "code": "organization_suspended",
                "message": f"{organization.name} is suspended: Card fraud. Contact "
                "support@hyperblock.local to reactivate it.",
                "param": None,
            }
        },
    )
    with django_capture_on_commit_callbacks(execute=True):
        organizations.organization_reactivate(organization=organization, actor=make_staff(SALES))
    assert api.get("/api/v1/reservations/").status_code == 200


def test_without_the_cache_drop_a_suspension_reaches_keys_within_the_cache_time(
    organization, owner, settings
):
    """The cached record carries the organization's status; it lapses after a few seconds."""
    _, raw = api_keys.api_key_create(
        organization=organization, actor=owner, name="ci", scopes=["reservations:read"]
    )
    api_key_authenticate(raw)
    Organization.objects.filter(pk=organization.pk).update(status="suspended")
    api_key_authenticate(raw)  # still cached: at most API_KEY_CACHE_SECONDS
    cache.clear()
    with pytest.raises(KeyRefused) as refused:
        api_key_authenticate(raw)
    assert (refused.value.code, refused.value.status) == ("organization_suspended", 403)
    assert settings.API_KEY_CACHE_SECONDS == 5


def test_members_see_why_their_organization_is_suspended(organization, owner):
    organizations.organization_suspend(
        organization=organization, actor=make_staff(SALES), reason="Invoice INV-7 is unpaid"
    )
    page = client_for(owner).get(f"/o/{organization.slug}/").content.decode()
    assert (
        f'<div class="alert alert-error" data-testid="suspended-banner">{organization.name} is '
        "suspended: Invoice INV-7 is unpaid. It cannot reserve capacity, pay or use its API "
        'keys. Contact <a href="mailto:support@hyperblock.local">support@hyperblock.local</a> '
        "to reactivate it.</div>"
    ) in page


def test_members_of_an_active_organization_see_no_banner(organization, other_organization):
    organizations.organization_suspend(
        organization=other_organization, actor=make_staff(SALES), reason="Fraud"
    )
    page = client_for(member_of(organization, Role.MEMBER)).get(f"/o/{organization.slug}/")
    assert b"suspended-banner" not in page.content


# --- Invoice terms ----------------------------------------------------------------------------
def test_sales_approves_invoice_terms_with_a_credit_limit(organization):
    owe(organization, "1200.00")
    sales = make_staff(SALES)
    terms.invoice_terms_approve(
        organization=organization,
        actor=sales,
        credit_limit="25000.00",
        payment_days=45,
        reason="Signed MSA",
    )
    assert state(organization) | {"reviewed_at": None} == {
        "status": "active",
        "suspended_reason": "",
        "payment_terms": "invoice",
        "payment_days": 45,
        "credit_limit": Decimal("25000.00"),
        "reviewed_at": None,
    }
    event = AuditEvent.objects.get(action="organization.terms_changed")
    assert (event.actor, event.reason, event.data) == (
        sales,
        "Signed MSA",
        {
            "from": {"payment_terms": "card", "payment_days": 30, "credit_limit": "0.00"},
            "to": {"payment_terms": "invoice", "payment_days": 45, "credit_limit": "25000.00"},
        },
    )


def test_a_credit_limit_equal_to_the_balance_is_allowed(organization):
    owe(organization, "1200.00")
    terms.invoice_terms_approve(
        organization=organization, actor=make_staff(SALES), credit_limit="1200", payment_days=30
    )
    assert state(organization)["credit_limit"] == Decimal("1200.00")


@pytest.mark.parametrize(
    ("limit", "days", "message", "param"),
    [
        (
            "1199.99",
            30,
            "The credit limit ($1,199.99) is below what Org owes now ($1,200.00). Give a limit "
            "of at least the balance.",
            "credit_limit",
        ),
        ("-1", 30, "The credit limit (−$1.00) is below what Org owes now", "credit_limit"),
        ("lots", 30, "Give the credit limit as an amount, e.g. 25000.00.", "credit_limit"),
        ("5000.001", 30, "Give the credit limit as an amount of at least 0.00", "credit_limit"),
        ("5000", 0, "Give the payment days as a whole number from 1 to 120.", "payment_days"),
        ("5000", 121, "Give the payment days as a whole number from 1 to 120.", "payment_days"),
    ],
)
def test_bad_terms_are_refused_and_change_nothing(organization, limit, days, message, param):
    Organization.objects.filter(pk=organization.pk).update(name="Org")
    owe(organization, "1200.00")
    before = state(organization)
    with pytest.raises(ServiceError) as refused:
        terms.invoice_terms_approve(
            organization=organization,
            actor=make_staff(SALES),
            credit_limit=limit,
            payment_days=days,
        )
    assert refused.value.message.startswith(message)
    assert refused.value.param == param
    assert state(organization) == before
    assert AuditEvent.objects.filter(action="organization.terms_changed").count() == 0


@pytest.mark.parametrize("group", [OPERATIONS, FINANCE])
def test_only_sales_approves_terms(organization, group):
    before = state(organization)
    with pytest.raises(NotAllowed, match="You are not allowed to approve payment terms."):
        terms.invoice_terms_approve(
            organization=organization,
            actor=make_staff(group),
            credit_limit="100",
            payment_days=30,
        )
    with pytest.raises(NotAllowed):
        terms.card_terms_set(organization=organization, actor=make_staff(group))
    assert state(organization) == before


def test_switching_back_to_card_closes_the_credit_line(organization):
    sales = make_staff(SALES)
    terms.invoice_terms_approve(
        organization=organization, actor=sales, credit_limit="9000", payment_days=60
    )
    terms.card_terms_set(organization=organization, actor=sales, reason="Late payments")
    got = state(organization)
    assert (got["payment_terms"], got["payment_days"], got["credit_limit"]) == (
        "card",
        60,
        Decimal("0.00"),
    )
    with pytest.raises(Conflict, match="already has these terms; nothing changed."):
        terms.card_terms_set(organization=organization, actor=sales)
    assert AuditEvent.objects.filter(action="organization.terms_changed").count() == 2


# --- Review -----------------------------------------------------------------------------------
def test_sales_marks_a_new_organization_reviewed_once(organization):
    sales = make_staff(SALES)
    organizations.organization_review(organization=organization, actor=sales)
    organization.refresh_from_db()
    assert organization.reviewed_by == sales
    assert organization.reviewed_at is not None
    with pytest.raises(Conflict, match="was already reviewed on"):
        organizations.organization_review(organization=organization, actor=make_staff(SALES))
    organization.refresh_from_db()
    assert organization.reviewed_by == sales
    assert AuditEvent.objects.filter(action="organization.reviewed").count() == 1


@pytest.mark.parametrize("group", [OPERATIONS, FINANCE])
def test_only_sales_reviews(organization, group):
    with pytest.raises(NotAllowed, match="You are not allowed to review organizations."):
        organizations.organization_review(organization=organization, actor=make_staff(group))
    assert state(organization)["reviewed_at"] is None
