"""A member of one organization never sees or changes another's, whatever the id."""

import pytest
from django.urls import reverse

from accounts.models import Invitation, Membership
from accounts.permissions import Role
from core.models import AuditEvent
from tests.conftest import client_for, member_of


@pytest.fixture
def foreign(other_organization):
    """The other tenant's member and invitation ids, for guessing."""
    membership = Membership.objects.get(organization=other_organization)
    invitation = Invitation.objects.create(
        organization=other_organization,
        email="guest@example.com",
        role=Role.MEMBER,
        token_digest="0" * 64,
        expires_at="2099-01-01T00:00:00Z",
    )
    return membership, invitation


def _state() -> list:
    return [
        list(Membership.objects.order_by("pk").values_list("pk", "role")),
        list(Invitation.objects.order_by("pk").values_list("pk", "revoked_at")),
        AuditEvent.objects.count(),
    ]


@pytest.mark.parametrize("role", list(Role.values))
def test_another_organizations_pages_are_404(organization, other_organization, owner, role):
    actor = owner if role == Role.OWNER else member_of(organization, role)
    client = client_for(actor)
    slug = other_organization.slug
    for name in ("dashboard", "team", "organization-settings"):
        assert client.get(reverse(name, args=[slug])).status_code == 404
    assert (
        client.post(
            reverse("team-invite", args=[slug]), {"email": "a@b.co", "role": "member"}
        ).status_code
        == 404
    )
    assert (
        client.post(reverse("organization-settings", args=[slug]), {"name": "Pwned"}).status_code
        == 404
    )
    other_organization.refresh_from_db()
    assert other_organization.name == "Other Co"
    assert Invitation.objects.filter(organization=other_organization).count() == 0


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_guessed_ids_of_another_organization_change_nothing(organization, owner, foreign, role):
    actor = owner if role == Role.OWNER else member_of(organization, role)
    client = client_for(actor)
    membership, invitation = foreign
    before = _state()
    slug = organization.slug  # our own organization in the URL, their ids in the path
    client.post(reverse("member-role", args=[slug, membership.pk]), {"role": Role.MEMBER})
    client.post(reverse("member-remove", args=[slug, membership.pk]))
    client.post(reverse("invitation-revoke", args=[slug, invitation.pk]))
    assert _state() == before


def test_anonymous_visitors_are_sent_to_sign_in(organization):
    from django.test import Client

    response = Client().get(reverse("dashboard", args=[organization.slug]))
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next=/o/{organization.slug}/"


def test_org_switcher_lists_only_my_organizations(organization, other_organization, owner):
    page = client_for(owner).get(reverse("dashboard", args=[organization.slug]))
    assert [m.organization.slug for m in page.context["nav_memberships"]] == [organization.slug]
    assert b"Other Co" not in page.content
