from datetime import timedelta
from unittest import mock

import pytest
from django.core import mail, signing
from django.urls import reverse

from accounts import guards, tokens
from accounts.models import User
from core.errors import NotAllowed
from tests.factories import UserFactory


@pytest.fixture
def unverified(db: None) -> User:
    return UserFactory(email_verified_at=None)


def test_link_verifies_the_address_once(client, unverified):
    token = tokens.email_verification_token(unverified)
    response = client.get(reverse("verify-email", args=[token]))
    assert response.status_code == 302
    unverified.refresh_from_db()
    first = unverified.email_verified_at
    assert first is not None
    # Opening it again is harmless and keeps the first time.
    client.get(reverse("verify-email", args=[token]))
    unverified.refresh_from_db()
    assert unverified.email_verified_at == first


def test_tampered_link_is_refused(client, unverified):
    token = tokens.email_verification_token(unverified)
    tampered = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    response = client.get(reverse("verify-email", args=[tampered]))
    assert response.status_code == 400
    assert b"This verification link is not valid." in response.content
    unverified.refresh_from_db()
    assert unverified.email_verified_at is None


def test_forged_payload_for_another_user_is_refused(client, unverified):
    victim = UserFactory(email_verified_at=None)
    forged = signing.dumps({"u": victim.pk, "e": victim.email}, salt="wrong-salt")
    response = client.get(reverse("verify-email", args=[forged]))
    assert response.status_code == 400
    victim.refresh_from_db()
    assert victim.email_verified_at is None


def test_expired_link_is_refused(client, unverified):
    token = tokens.email_verification_token(unverified)
    later = signing.time.time() + timedelta(days=3, seconds=1).total_seconds()
    with mock.patch("django.core.signing.time.time", return_value=later):
        response = client.get(reverse("verify-email", args=[token]))
    assert response.status_code == 400
    assert b"This verification link has expired." in response.content
    unverified.refresh_from_db()
    assert unverified.email_verified_at is None


def test_link_for_a_changed_address_no_longer_works(client, unverified):
    token = tokens.email_verification_token(unverified)
    User.objects.filter(pk=unverified.pk).update(email="new@example.com")
    response = client.get(reverse("verify-email", args=[token]))
    assert response.status_code == 400
    assert b"no longer in use" in response.content


def test_unverified_users_are_stopped_by_the_shared_gate(unverified):
    with pytest.raises(NotAllowed) as excinfo:
        guards.require_verified_email(unverified)
    assert excinfo.value.code == "email_unverified"
    guards.require_verified_email(UserFactory())  # a verified user passes


def test_resend_is_throttled_to_one_a_minute(
    client, unverified, django_capture_on_commit_callbacks
):
    client.force_login(unverified)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("verify-email-resend"))
        client.post(reverse("verify-email-resend"))
    assert [m.to for m in mail.outbox] == [[unverified.email]]
    response = client.get("/account/")
    assert b"We just sent a link. Give it a minute" in response.content
