import re
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.models import Invitation, Membership
from accounts.permissions import Role
from accounts.services import memberships
from core.errors import Conflict, NotAllowed
from tests.conftest import client_for, member_of
from tests.factories import PASSWORD, UserFactory


def _invite(client, org, email="new@example.com", role=Role.MEMBER):
    return client.post(reverse("team-invite", args=[org.slug]), {"email": email, "role": role})


def _token_from_outbox() -> str:
    body = mail.outbox[-1].body
    return re.search(r"/invitations/([^/\s]+)/", body).group(1)


@pytest.fixture
def invited(organization, owner, django_capture_on_commit_callbacks):
    """An invitation of new@example.com as admin, and the token from its e-mail."""
    with django_capture_on_commit_callbacks(execute=True):
        response = _invite(client_for(owner, reauthenticated=True), organization, role=Role.ADMIN)
    assert response.status_code == 302
    return Invitation.objects.get(), _token_from_outbox()


def test_invitation_mail_names_the_inviter_and_the_role(invited, owner, organization):
    invitation, token = invited
    message = mail.outbox[-1]
    assert message.to == ["new@example.com"]
    assert (
        message.subject == f"{owner.display_name} invited you to {organization.name} on Hyperblock"
    )
    assert "as admin" in message.body
    # Only the digest is stored.
    assert token not in invitation.token_digest
    assert len(invitation.token_digest) == 64


def test_new_user_signs_up_through_the_link_and_joins_verified(client, invited, organization):
    invitation, token = invited
    page = client.get(reverse("invitation", args=[token]))
    assert page.status_code == 200
    assert b"Create account and join" in page.content
    response = client.post(
        reverse("invitation", args=[token]),
        {"full_name": "New Person", "password": "a-long-enough-secret-42"},
    )
    assert response.status_code == 302
    assert response["Location"] == f"/o/{organization.slug}/"
    membership = Membership.objects.get(user__email="new@example.com")
    assert (membership.organization_id, membership.role) == (organization.pk, Role.ADMIN)
    assert membership.user.is_verified
    invitation.refresh_from_db()
    assert invitation.accepted_by == membership.user
    # Single use: the same link now says so.
    again = client.get(reverse("invitation", args=[token]))
    assert again.status_code == 409
    assert b"This invitation has already been used." in again.content


def test_existing_user_accepts_after_signing_in(client, invited, organization):
    _invitation, token = invited
    existing = UserFactory(email="new@example.com")
    page = client.get(reverse("invitation", args=[token]))
    assert b"Sign in as new@example.com to accept" in page.content
    client.force_login(existing)
    response = client.post(reverse("invitation", args=[token]))
    assert response["Location"] == f"/o/{organization.slug}/"
    assert Membership.objects.get(user=existing).role == Role.ADMIN


def test_someone_else_cannot_use_the_link(client, invited):
    invitation, token = invited
    stranger = UserFactory(email="stranger@example.com")
    client.force_login(stranger)
    page = client.get(reverse("invitation", args=[token]))
    assert b"You are signed in as stranger@example.com" in page.content
    client.post(reverse("invitation", args=[token]))
    assert not Membership.objects.filter(user=stranger).exists()
    invitation.refresh_from_db()
    assert invitation.accepted_at is None


def test_expired_invitation_is_refused(client, invited):
    invitation, token = invited
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = client.post(
        reverse("invitation", args=[token]),
        {"full_name": "X", "password": "a-long-enough-secret-42"},
    )
    assert response.status_code == 409
    assert b"This invitation has expired." in response.content
    assert not Membership.objects.filter(user__email="new@example.com").exists()


def test_unknown_token_is_refused(client, db):
    response = client.get(reverse("invitation", args=["not-a-real-token"]))
    assert response.status_code == 404
    assert b"This invitation link is not valid." in response.content


def test_reinviting_replaces_the_old_link(
    organization, owner, invited, django_capture_on_commit_callbacks
):
    first, first_token = invited
    with django_capture_on_commit_callbacks(execute=True):
        _invite(client_for(owner, reauthenticated=True), organization, email="NEW@example.com")
    second_token = _token_from_outbox()
    first.refresh_from_db()
    assert first.revoked_at is not None
    with pytest.raises(Conflict, match="withdrawn"):
        memberships.invitation_for_token(first_token)
    assert memberships.invitation_for_token(second_token).role == Role.MEMBER


def test_revoked_invitation_cannot_be_used(client, organization, owner, invited):
    invitation, token = invited
    client_for(owner, reauthenticated=True).post(
        reverse("invitation-revoke", args=[organization.slug, invitation.pk])
    )
    response = client.get(reverse("invitation", args=[token]))
    assert response.status_code == 409
    assert b"This invitation was withdrawn." in response.content


def test_inviting_an_existing_member_is_refused(organization, owner):
    member = member_of(organization, Role.MEMBER)
    response = _invite(
        client_for(owner, reauthenticated=True), organization, email=member.email.upper()
    )
    assert response.status_code == 400
    assert response.context["invite_form"].errors["email"] == [
        f"{member.email} is already a member."
    ]
    assert Invitation.objects.count() == 0


def test_inviting_a_bad_address_is_refused(organization, owner):
    response = _invite(
        client_for(owner, reauthenticated=True), organization, email="not an address"
    )
    assert response.status_code == 400
    assert response.context["invite_form"].errors["email"] == ["Enter a valid email address."]
    assert Invitation.objects.count() == 0


def test_only_owners_may_invite_owners(organization):
    admin = member_of(organization, Role.ADMIN)
    response = _invite(client_for(admin, reauthenticated=True), organization, role=Role.OWNER)
    assert response.status_code == 400
    assert Invitation.objects.count() == 0
    with pytest.raises(NotAllowed, match="Only an owner can make someone an owner."):
        memberships.invitation_create(
            organization=organization, actor=admin, email="x@example.com", role=Role.OWNER
        )
    assert Invitation.objects.count() == 0


def test_accepting_twice_at_once_makes_one_membership(invited):
    """The second accept sees the first under the row lock and is refused."""
    _invitation, token = invited
    user = UserFactory(email="new@example.com", password=PASSWORD)
    memberships.invitation_accept(token=token, user=user)
    with pytest.raises(Conflict, match="already been used"):
        memberships.invitation_accept(token=token, user=user)
    assert Membership.objects.filter(user=user).count() == 1
