"""E-mail anyone can make the portal send is limited: invitations per sender, per invited
address and per organization; sign-ups per client address; password resets per address typed
and per client address. Past a limit nothing is sent and the refusal says when to try again;
the password reset's refusal is the same whether or not the address has an account. Only a
verified address may invite."""

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import Invitation, Membership, Organization, User
from accounts.permissions import Role
from accounts.services import memberships
from core.errors import NotAllowed
from core.ratelimit import RateLimited
from tests.conftest import client_for, member_of
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

SIGNUP = {
    "full_name": "Grace Hopper",
    "password": "compilers-are-fun-1952",
    "organization_name": "Cobol Computing",
    "country": "US",
    "billing_email": "",
}


@pytest.fixture
def limits(settings):
    """Set some limits low; the rest stay as generous as the test settings make them."""

    def set_limits(**low: int) -> None:
        settings.EMAIL_RATE_LIMITS = {**settings.EMAIL_RATE_LIMITS, **low}

    return set_limits


def _invite(actor, organization, email):
    return memberships.invitation_create(
        organization=organization, actor=actor, email=email, role=Role.MEMBER
    )


def test_an_unverified_user_cannot_invite(organization, owner, django_capture_on_commit_callbacks):
    owner.email_verified_at = None
    owner.save(update_fields=["email_verified_at"])
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(NotAllowed) as refused:
        _invite(owner, organization, "new@example.com")
    assert refused.value.code == "email_unverified"
    assert refused.value.message == (
        "Verify your e-mail address first: use the link we sent you, or send a new one."
    )
    response = client_for(owner, reauthenticated=True).post(
        reverse("team-invite", args=[organization.slug]),
        {"email": "new@example.com", "role": Role.MEMBER},
    )
    assert response.status_code == 400
    assert "Verify your e-mail address first" in response.text
    assert (Invitation.objects.count(), mail.outbox) == (0, [])


def test_invitations_are_limited_per_sender(
    organization, owner, limits, django_capture_on_commit_callbacks
):
    limits(invitation_sender=2)
    with django_capture_on_commit_callbacks(execute=True):
        _invite(owner, organization, "a@example.com")
        _invite(owner, organization, "b@example.com")
    response = client_for(owner, reauthenticated=True).post(
        reverse("team-invite", args=[organization.slug]),
        {"email": "c@example.com", "role": Role.MEMBER},
    )
    assert response.status_code == 400
    assert "You have sent 2 invitations this hour, the most one person may." in response.text
    assert sorted(Invitation.objects.values_list("email", flat=True)) == [
        "a@example.com",
        "b@example.com",
    ]
    assert len(mail.outbox) == 2
    # Another admin of the same organization is not held up by this one.
    admin = member_of(organization, Role.ADMIN)
    assert _invite(admin, organization, "c@example.com")[0].email == "c@example.com"


def test_invitations_are_limited_per_address_whichever_organization_invites(
    organization, owner, other_organization, limits
):
    limits(invitation_recipient=1)
    _invite(owner, organization, "target@example.com")
    theirs = Membership.objects.get(organization=other_organization).user
    with pytest.raises(RateLimited) as refused:
        _invite(theirs, other_organization, "Target@Example.com")
    assert refused.value.message.startswith(
        "target@example.com was invited 1 times this hour, the most for one address. Try again in "
    )
    assert list(Invitation.objects.values_list("organization", flat=True)) == [organization.pk]


def test_invitations_are_limited_per_organization(organization, owner, limits):
    limits(invitation_organization=2)
    admin = member_of(organization, Role.ADMIN)
    _invite(owner, organization, "a@example.com")
    _invite(admin, organization, "b@example.com")
    with pytest.raises(RateLimited) as refused:
        _invite(admin, organization, "c@example.com")
    assert f"{organization.name} has sent 2 invitations this hour." in refused.value.message
    assert "Support can raise the limit for your organization." in refused.value.message
    assert Invitation.objects.count() == 2
    # Another organization has its own count.
    elsewhere = MembershipFactory(role=Role.OWNER)
    _invite(elsewhere.user, elsewhere.organization, "c@example.com")
    assert Invitation.objects.count() == 3


def test_sign_ups_are_limited_per_client_address(client, limits):
    limits(signup_client=1)
    first = client.post(
        reverse("signup"),
        {**SIGNUP, "email": "one@example.com", "organization_slug": "one"},
        REMOTE_ADDR="203.0.113.7",
    )
    assert first.status_code == 302
    client.post(reverse("logout"))
    second = client.post(
        reverse("signup"),
        {**SIGNUP, "email": "two@example.com", "organization_slug": "two"},
        REMOTE_ADDR="203.0.113.7",
    )
    assert second.status_code == 200
    assert "1 accounts were made from your network this hour, the most we allow." in second.text
    assert list(User.objects.values_list("email", flat=True)) == ["one@example.com"]
    assert list(Organization.objects.values_list("slug", flat=True)) == ["one"]
    # Another network can still sign up.
    third = client.post(
        reverse("signup"),
        {**SIGNUP, "email": "two@example.com", "organization_slug": "two"},
        REMOTE_ADDR="198.51.100.9",
    )
    assert third.status_code == 302


def _reset(client, email, address="203.0.113.7"):
    return client.post(reverse("password-reset"), {"email": email}, REMOTE_ADDR=address)


RESET_REFUSED = (
    "Too many password reset e-mails were asked for this address or from your network this "
    "hour. Try again in"
)


def test_password_resets_are_limited_per_address_and_say_nothing_about_accounts(
    client, limits, django_capture_on_commit_callbacks
):
    limits(password_reset_recipient=2)
    UserFactory(email="ada@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        sent = [_reset(client, "ada@example.com").status_code for _ in range(2)]
        known = _reset(client, "ADA@example.com")
        for _ in range(2):
            _reset(client, "nobody@example.com")
        unknown = _reset(client, "nobody@example.com")
    assert sent == [302, 302]
    assert len(mail.outbox) == 2
    # The refusal reads the same for an address with an account and one without.
    assert (known.status_code, unknown.status_code) == (429, 429)
    assert RESET_REFUSED in known.text
    assert known.context["form"].errors == unknown.context["form"].errors


def test_password_resets_are_limited_per_client_address(
    client, limits, django_capture_on_commit_callbacks
):
    limits(password_reset_client=2)
    UserFactory(email="ada@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        assert _reset(client, "one@example.com").status_code == 302
        assert _reset(client, "two@example.com").status_code == 302
        refused = _reset(client, "ada@example.com")
        elsewhere = _reset(client, "ada@example.com", address="198.51.100.9")
    assert refused.status_code == 429
    assert RESET_REFUSED in refused.text
    assert elsewhere.status_code == 302
    assert [message.to for message in mail.outbox] == [["ada@example.com"]]


def test_verification_links_are_limited_per_address_across_sessions(
    limits, django_capture_on_commit_callbacks
):
    """The minute between links is kept in the session; signing in again gives a new one, so
    the address itself is counted too."""
    limits(verification_recipient=2)
    unverified = UserFactory(email_verified_at=None)
    for _ in range(3):
        client = client_for(unverified)  # a new session each time
        with django_capture_on_commit_callbacks(execute=True):
            client.post(reverse("verify-email-resend"))
    assert [m.to for m in mail.outbox] == [[unverified.email]] * 2
    page = client.get("/account/")
    assert b"Too many verification links were sent to this address this hour." in page.content
