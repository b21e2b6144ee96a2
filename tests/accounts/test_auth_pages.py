"""The pages around signing in carry the product's name, never the host they were asked on, and
the password reset answers the same whether or not the address has an account."""

import re

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.core import mail
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.views import locked_out
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

HOST = "127.0.0.1:8765"
BRAND = '<a class="brand" href="/"><span class="brand-mark">▦</span>Hyperblock</a>'


def _reset_path(user, token: str | None = None) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return reverse(
        "password_reset_confirm",
        args=[uid, token or default_token_generator.make_token(user)],
    )


def _pages(user) -> list[tuple[str, str, str, dict]]:
    """(title, method, path, form) of each page, as someone signed out sees it."""
    return [
        ("Sign in", "get", reverse("login"), {}),
        ("Sign in", "post", reverse("login"), {"username": user.email, "password": "wrong"}),
        ("Create your account", "get", reverse("signup"), {}),
        ("Create your account", "post", reverse("signup"), {"email": "not-an-address"}),
        ("Check your inbox", "get", reverse("signup-sent"), {}),
        ("Reset your password", "get", reverse("password-reset"), {}),
        ("Reset your password", "post", reverse("password-reset"), {"email": "nope"}),
        ("Check your inbox", "get", reverse("password-reset-done"), {}),
        ("Choose a new password", "get", _reset_path(user), {}),
        ("Choose a new password", "get", _reset_path(user, "bad-token"), {}),
        ("Verification failed", "get", reverse("verify-email", args=["not-a-token"]), {}),
        ("Invitation", "get", reverse("invitation", args=["not-a-token"]), {}),
    ]


def _assert_branded(html: str, title: str, where: object) -> None:
    assert f"<title>{title} · Hyperblock</title>" in html, where
    assert BRAND in html, where
    assert "127.0.0.1" not in html, where
    assert "8765" not in html, where


def test_every_auth_page_names_the_product_not_the_host():
    user = UserFactory(email="ada@example.com")
    client = Client(HTTP_HOST=HOST)
    for title, method, path, form in _pages(user):
        response = getattr(client, method)(path, form, follow=True)
        assert response.status_code in (200, 400, 404), (method, path, response.status_code)
        _assert_branded(response.text, title, (method, path))


def test_the_pages_a_signed_in_person_sees_name_the_product():
    user = UserFactory()
    client = Client(HTTP_HOST=HOST)
    client.force_login(user)
    _assert_branded(
        client.get(reverse("confirm-password")).text, "Confirm your password", "confirm"
    )
    request = RequestFactory(HTTP_HOST=HOST).post(reverse("login"))
    request.user = user
    _assert_branded(locked_out(request, None, {}).content.decode(), "Too many attempts", "lock")


def _reset(email: str, captured) -> tuple[int, str, str]:
    client = Client(HTTP_HOST=HOST)
    with captured(execute=True):
        response = client.post(reverse("password-reset"), {"email": email})
    page = client.get(response["Location"])
    text = re.sub(r'"X-CSRFToken": "[^"]+"', "", page.text)
    return response.status_code, response["Location"], re.sub(r'nonce="[^"]+"', "", text)


def test_password_reset_answers_the_same_for_a_known_and_an_unknown_address(
    django_capture_on_commit_callbacks,
):
    UserFactory(email="ada@example.com")
    known = _reset("ada@example.com", django_capture_on_commit_callbacks)
    unknown = _reset("nobody@example.com", django_capture_on_commit_callbacks)
    assert known == unknown
    assert known[:2] == (302, "/password/reset/sent/")
    # Only the account's owner is mailed, and the link names the product's site.
    assert [(m.to, m.subject) for m in mail.outbox] == [
        (["ada@example.com"], "Reset your Hyperblock password")
    ]
    assert "http://127.0.0.1:8000/password/reset/" in mail.outbox[0].body
    assert "8765" not in mail.outbox[0].body
