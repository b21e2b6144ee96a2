"""Keys, cards and roles ask for the password again unless it was typed in the last
REAUTHENTICATION_MAX_AGE (at sign-in or on the confirmation page); a refused request changes
nothing and comes back to the page it was made from."""

import time

import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.urls import reverse

from accounts.decorators import REAUTH_SESSION_KEY
from accounts.models import ApiKey, Invitation, Membership
from accounts.permissions import Role
from billing import gateway
from billing.models import BillingAccount
from billing.services import accounts, cards
from core.models import AuditEvent
from tests.billing.conftest import card, localstripe_url, stripe_api  # noqa: F401
from tests.conftest import client_for, member_of
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

CONFIRM = reverse("confirm-password")


def _asked(response, then: str) -> None:
    assert response.status_code == 302
    assert response["Location"] == f"{CONFIRM}?next={then}"


def _state(organization) -> list:
    return [
        list(Membership.objects.order_by("pk").values_list("pk", "role")),
        Invitation.objects.count(),
        ApiKey.objects.count(),
        list(BillingAccount.objects.values_list("default_payment_method_id", flat=True)),
        AuditEvent.objects.count(),
    ]


@pytest.fixture
def teammate(organization):
    return Membership.objects.get(user=member_of(organization, Role.MEMBER))


def _requests(organization, teammate) -> list[tuple[str, str, dict, str]]:
    slug = organization.slug
    team = reverse("team", args=[slug])
    keys = reverse("api-keys", args=[slug])
    return [
        ("post", reverse("team-invite", args=[slug]), {"email": "x@example.com"}, team),
        ("post", reverse("member-role", args=[slug, teammate.pk]), {"role": Role.ADMIN}, team),
        ("post", reverse("member-remove", args=[slug, teammate.pk]), {}, team),
        ("get", reverse("card-add", args=[slug]), {}, reverse("card-add", args=[slug])),
        ("post", keys, {"name": "CI", "scopes": ["reservations:read"]}, keys),
    ]


def test_every_sensitive_action_asks_for_the_password_and_changes_nothing(
    organization, owner, teammate
):
    client = client_for(owner)
    before = _state(organization)
    for method, url, data, then in _requests(organization, teammate):
        _asked(getattr(client, method)(url, data), then)
    assert _state(organization) == before


def test_changing_a_saved_card_asks_for_the_password(organization, owner, stripe_api):
    account = accounts.billing_account_ensure(organization)
    method = card(stripe_api)
    gateway.payment_method_attach(
        payment_method_id=method, customer_id=account.stripe_customer_id, idempotency_key=method
    )
    client = client_for(owner)
    billing = reverse("billing", args=[organization.slug])
    for name in ("card-default", "card-remove"):
        _asked(client.post(reverse(name, args=[organization.slug, method])), billing)
    account.refresh_from_db()
    assert account.default_payment_method_id == ""
    assert [c.id for c in cards.cards_for_account(account)] == [method]


def test_a_stale_confirmation_asks_again(organization, owner, teammate, settings):
    client = client_for(owner, reauthenticated=True)
    session = client.session
    session[REAUTH_SESSION_KEY] = time.time() - settings.REAUTHENTICATION_MAX_AGE.total_seconds()
    session.save()
    url = reverse("member-role", args=[organization.slug, teammate.pk])
    _asked(client.post(url, {"role": Role.ADMIN}), reverse("team", args=[organization.slug]))
    teammate.refresh_from_db()
    assert teammate.role == Role.MEMBER


def test_htmx_asks_with_a_whole_page_redirect(organization, owner, teammate):
    response = client_for(owner).post(
        reverse("member-role", args=[organization.slug, teammate.pk]),
        {"role": Role.ADMIN},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"{CONFIRM}?next=/o/{organization.slug}/team/"
    teammate.refresh_from_db()
    assert teammate.role == Role.MEMBER


def test_the_password_confirmation_lets_the_action_through(organization, owner, teammate):
    client = client_for(owner)
    team = reverse("team", args=[organization.slug])
    wrong = client.post(CONFIRM, {"password": "not it", "next": team})
    assert wrong.status_code == 400
    assert "That password is not right." in wrong.text
    back = client.post(CONFIRM, {"password": PASSWORD, "next": team})
    assert (back.status_code, back["Location"]) == (302, team)
    changed = client.post(
        reverse("member-role", args=[organization.slug, teammate.pk]), {"role": Role.ADMIN}
    )
    assert (changed.status_code, changed["Location"]) == (302, team)
    teammate.refresh_from_db()
    assert teammate.role == Role.ADMIN


def test_the_confirmation_only_returns_to_this_site(owner):
    client = client_for(owner)
    response = client.post(CONFIRM, {"password": PASSWORD, "next": "https://evil.example/"})
    assert response["Location"] == "/"


def test_signing_in_counts_as_typing_the_password(organization, owner, teammate):
    client = Client()
    signed_in = client.post(reverse("login"), {"username": owner.email, "password": PASSWORD})
    assert signed_in.status_code == 302
    response = client.post(
        reverse("member-role", args=[organization.slug, teammate.pk]), {"role": Role.BILLING}
    )
    assert response["Location"] == reverse("team", args=[organization.slug])
    teammate.refresh_from_db()
    assert teammate.role == Role.BILLING


def test_another_organization_is_404_before_any_password_prompt(owner, other_organization):
    theirs = Membership.objects.get(organization=other_organization)
    client = client_for(owner)
    slug = other_organization.slug
    assert (
        client.post(reverse("member-role", args=[slug, theirs.pk]), {"role": "admin"}).status_code
        == 404
    )
    assert client.get(reverse("card-add", args=[slug])).status_code == 404


def _failures(user) -> int:
    attempt = AccessAttempt.objects.filter(username=user.email.lower()).first()
    return 0 if attempt is None else attempt.failures_since_start


def test_wrong_confirmation_passwords_lock_the_account_as_sign_in_does(
    organization, owner, settings
):
    client = client_for(owner)
    team = reverse("team", args=[organization.slug])
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(CONFIRM, {"password": "not it", "next": team}).status_code == 400
    assert _failures(owner) == settings.AXES_FAILURE_LIMIT - 1
    locked = client.post(CONFIRM, {"password": "still not it", "next": team})
    assert locked.status_code == 429
    assert "locked for 15 minutes after 10 failed attempts" in locked.text
    # The guessing session is signed out, and the right password no longer signs in.
    assert "_auth_user_id" not in client.session
    assert client.post(CONFIRM, {"password": PASSWORD, "next": team}).status_code == 302
    assert REAUTH_SESSION_KEY not in client.session
    signed_in = Client().post(reverse("login"), {"username": owner.email, "password": PASSWORD})
    assert signed_in.status_code == 429


def test_a_locked_account_is_refused_the_right_confirmation_password(organization, owner, settings):
    client = client_for(owner)  # a session from before someone guessed at the sign-in
    for _ in range(settings.AXES_FAILURE_LIMIT):
        Client().post(reverse("login"), {"username": owner.email, "password": "wrong"})
    refused = client.post(CONFIRM, {"password": PASSWORD})
    assert refused.status_code == 429
    assert "_auth_user_id" not in client.session
    assert REAUTH_SESSION_KEY not in client.session


def test_a_right_confirmation_clears_earlier_failures(organization, owner):
    client = client_for(owner)
    for _ in range(3):
        client.post(CONFIRM, {"password": "not it"})
    assert _failures(owner) == 3
    assert client.post(CONFIRM, {"password": PASSWORD}).status_code == 302
    assert _failures(owner) == 0


def test_wrong_passwords_at_the_password_change_count_toward_the_lockout(owner, settings):
    client = client_for(owner)
    profile = reverse("profile")
    change = {
        "form": "password",
        "new_password1": "a-new-pass-123",
        "new_password2": "a-new-pass-123",
    }
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        wrong = client.post(profile, {**change, "old_password": "not it"})
        assert wrong.status_code == 200
        assert wrong.context["password_form"].errors["old_password"] == [
            "Your old password was entered incorrectly. Please enter it again."
        ]
    assert client.post(profile, {**change, "old_password": "not it"}).status_code == 429
    assert "_auth_user_id" not in client.session
    signed_in = Client().post(reverse("login"), {"username": owner.email, "password": PASSWORD})
    assert signed_in.status_code == 429
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)
