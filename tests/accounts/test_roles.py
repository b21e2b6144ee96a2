"""The role matrix, parametrized over every role, and the last-owner rule."""

import pytest
from django.urls import reverse

from accounts.models import Invitation, Membership
from accounts.permissions import ROLE_PERMISSIONS, Permission, Role, can
from accounts.services import memberships
from core.errors import Conflict, NotAllowed
from tests.conftest import client_for, member_of

ALL_ROLES = list(Role.values)


def test_matrix_is_exactly_as_documented():
    assert ROLE_PERMISSIONS[Role.OWNER] == frozenset(Permission)
    assert {p for p in Permission if can(Role.ADMIN, p)} == set(Permission) - {
        Permission.GRANT_OWNER
    }
    assert {p for p in Permission if can(Role.MEMBER, p)} == {
        Permission.VIEW_ORGANIZATION,
        Permission.VIEW_TEAM,
        Permission.VIEW_RESERVATIONS,
        Permission.MANAGE_RESERVATIONS,
        Permission.MANAGE_API_KEYS,
        Permission.VIEW_USAGE,
        Permission.USE_HARDWARE,
    }
    # Billing sees reservations to pay for them, but does not reach the nodes.
    assert {p for p in Permission if can(Role.BILLING, p)} == {
        Permission.VIEW_ORGANIZATION,
        Permission.VIEW_TEAM,
        Permission.VIEW_RESERVATIONS,
        Permission.VIEW_BILLING,
        Permission.MANAGE_BILLING,
        Permission.VIEW_USAGE,
    }
    assert not can("intruder", Permission.VIEW_ORGANIZATION)


@pytest.mark.parametrize("role", ALL_ROLES)
def test_every_role_sees_the_dashboard_and_team_and_only_managers_the_settings(
    organization, owner, role
):
    client = client_for(
        owner if role == Role.OWNER else member_of(organization, role), reauthenticated=True
    )
    for name in ("dashboard", "team"):
        assert client.get(reverse(name, args=[organization.slug])).status_code == 200
    settings_page = client.get(reverse("organization-settings", args=[organization.slug]))
    if role in {Role.OWNER, Role.ADMIN}:
        assert settings_page.status_code == 200
    else:
        assert settings_page.status_code == 403
        assert (
            f"Your role ({Role(role).label.lower()}) cannot edit organization details. Ask an "
            "owner or admin." in settings_page.text
        )


@pytest.mark.parametrize("role", ALL_ROLES)
def test_inviting_is_for_owners_and_admins(organization, owner, role):
    actor = owner if role == Role.OWNER else member_of(organization, role)
    response = client_for(actor, reauthenticated=True).post(
        reverse("team-invite", args=[organization.slug]),
        {"email": "x@example.com", "role": "member"},
    )
    allowed = role in {Role.OWNER, Role.ADMIN}
    assert response.status_code == (302 if allowed else 403)
    assert Invitation.objects.count() == (1 if allowed else 0)


@pytest.mark.parametrize("role", ALL_ROLES)
def test_changing_roles_is_for_owners_and_admins(organization, owner, role):
    actor = owner if role == Role.OWNER else member_of(organization, role)
    target = Membership.objects.get(user=member_of(organization, Role.MEMBER))
    response = client_for(actor, reauthenticated=True).post(
        reverse("member-role", args=[organization.slug, target.pk]), {"role": Role.BILLING}
    )
    allowed = role in {Role.OWNER, Role.ADMIN}
    assert response.status_code == (302 if allowed else 403)
    target.refresh_from_db()
    assert target.role == (Role.BILLING if allowed else Role.MEMBER)


@pytest.mark.parametrize("role", ALL_ROLES)
def test_editing_organization_details_is_for_owners_and_admins(organization, owner, role):
    actor = owner if role == Role.OWNER else member_of(organization, role)
    before = organization.name
    response = client_for(actor, reauthenticated=True).post(
        reverse("organization-settings", args=[organization.slug]),
        {
            "name": "Renamed",
            "legal_name": "Renamed GmbH",
            "country": "DE",
            "billing_email": organization.billing_email,
            "tax_id": "",
            "address": "",
        },
    )
    allowed = role in {Role.OWNER, Role.ADMIN}
    assert response.status_code == (302 if allowed else 403)
    organization.refresh_from_db()
    assert organization.name == ("Renamed" if allowed else before)
    assert organization.legal_name == ("Renamed GmbH" if allowed else "")


def test_invalid_organization_details_change_nothing(organization, owner):
    before = organization.name
    response = client_for(owner, reauthenticated=True).post(
        reverse("organization-settings", args=[organization.slug]),
        {"name": "", "country": "DE", "billing_email": "not-an-email"},
    )
    assert response.status_code == 200
    assert response.context["form"].errors["billing_email"] == ["Enter a valid email address."]
    organization.refresh_from_db()
    assert organization.name == before


def test_htmx_role_change_returns_the_row(organization, owner):
    target = Membership.objects.get(user=member_of(organization, Role.MEMBER))
    response = client_for(owner, reauthenticated=True).post(
        reverse("member-role", args=[organization.slug, target.pk]),
        {"role": Role.ADMIN},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith(f'<tr id="member-{target.pk}">')
    target.refresh_from_db()
    assert target.role == Role.ADMIN


def test_the_last_owner_cannot_be_demoted_or_removed(organization, owner):
    ownership = Membership.objects.get(user=owner)
    client = client_for(owner, reauthenticated=True)
    client.post(
        reverse("member-role", args=[organization.slug, ownership.pk]), {"role": Role.ADMIN}
    )
    client.post(reverse("member-remove", args=[organization.slug, ownership.pk]))
    ownership.refresh_from_db()
    assert ownership.role == Role.OWNER
    with pytest.raises(Conflict, match="at least one owner"):
        memberships.membership_role_change(membership=ownership, actor=owner, role=Role.ADMIN)
    with pytest.raises(Conflict, match="at least one owner"):
        memberships.membership_remove(membership=ownership, actor=owner)
    assert Membership.objects.filter(organization=organization, role=Role.OWNER).count() == 1


def test_with_two_owners_one_may_step_down(organization, owner):
    second = Membership.objects.get(user=member_of(organization, Role.OWNER))
    memberships.membership_role_change(membership=second, actor=owner, role=Role.MEMBER)
    second.refresh_from_db()
    assert second.role == Role.MEMBER


def test_admins_cannot_touch_owners(organization, owner):
    admin = member_of(organization, Role.ADMIN)
    ownership = Membership.objects.get(user=owner)
    with pytest.raises(NotAllowed, match="Only an owner can change another owner's role."):
        memberships.membership_role_change(membership=ownership, actor=admin, role=Role.MEMBER)
    with pytest.raises(NotAllowed, match="Only an owner can remove another owner."):
        memberships.membership_remove(membership=ownership, actor=admin)
    ownership.refresh_from_db()
    assert ownership.role == Role.OWNER


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, Role.BILLING])
def test_anyone_may_leave(organization, owner, role):
    user = member_of(organization, role)
    membership = Membership.objects.get(user=user)
    response = client_for(user, reauthenticated=True).post(
        reverse("member-remove", args=[organization.slug, membership.pk])
    )
    assert response["Location"] == "/"
    assert not Membership.objects.filter(pk=membership.pk).exists()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.BILLING])
def test_members_cannot_remove_others(organization, owner, role):
    actor = member_of(organization, role)
    victim = Membership.objects.get(user=member_of(organization, Role.MEMBER))
    client_for(actor, reauthenticated=True).post(
        reverse("member-remove", args=[organization.slug, victim.pk])
    )
    assert Membership.objects.filter(pk=victim.pk).exists()
