"""Every `next=` the portal follows stays on this site: a link that would bounce a signed-in
customer elsewhere lands on the default page instead."""

import re
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from accounts.redirects import safe_next
from tests.conftest import client_for
from tests.factories import PASSWORD, UserFactory

AWAY = [
    "https://evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "https:evil.example",
    " https://evil.example/",
    "javascript:alert(1)",
    "logout",  # a bare word: redirect() would read it as a URL name
]


@pytest.fixture
def unverified(db):
    return UserFactory(email_verified_at=None)


@pytest.mark.parametrize("target", AWAY)
def test_the_verification_resend_does_not_follow_next_away(unverified, target):
    client = client_for(unverified)
    response = client.post(reverse("verify-email-resend"), {"next": target})
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_the_verification_resend_goes_back_to_the_page_it_was_sent_from(unverified):
    response = client_for(unverified).post(reverse("verify-email-resend"), {"next": "/account/"})
    assert response["Location"] == "/account/"


@pytest.mark.parametrize("target", AWAY)
@pytest.mark.parametrize("via", ["GET", "POST"])
def test_the_password_confirmation_does_not_follow_next_away(db, target, via):
    user = UserFactory()
    client = Client()
    client.force_login(user)
    url = reverse("confirm-password")
    if via == "GET":
        page = client.get(url, {"next": target})
        assert page.context["next"] == "/"
        response = client.post(url, {"password": PASSWORD})
    else:
        response = client.post(url, {"password": PASSWORD, "next": target})
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_the_password_confirmation_goes_back_to_a_page_here(db):
    user = UserFactory()
    client = Client()
    client.force_login(user)
    response = client.post(
        reverse("confirm-password"), {"password": PASSWORD, "next": "/account/?tab=keys"}
    )
    assert response["Location"] == "/account/?tab=keys"


def test_sign_in_does_not_follow_next_away(db):
    user = UserFactory()
    response = Client().post(
        reverse("login") + "?next=https://evil.example/",
        {"username": user.email, "password": PASSWORD, "next": "https://evil.example/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_https_requests_go_back_over_https_only(rf):
    request = rf.post("/", {"next": "http://testserver/account/"}, secure=True)
    assert safe_next(request, "/") == "/"
    assert safe_next(rf.post("/", {"next": "/account/"}, secure=True), "/") == "/account/"


def test_no_view_reads_next_by_hand():
    """A new view that follows `next` must use safe_next (the back office has its own, with
    the same check, in backoffice/two_factor.py)."""
    root = Path(__file__).resolve().parents[2]
    allowed = {root / "accounts" / "redirects.py", root / "backoffice" / "two_factor.py"}
    reads = re.compile(r"""(GET|POST|REQUEST|query_params|data)\s*(\.get\(|\[)\s*["']next["']""")
    found = [
        str(path.relative_to(root))
        for app in ("core", "accounts", "capacity", "billing", "backoffice", "portal")
        for path in (root / app).rglob("*.py")
        if path not in allowed and reads.search(path.read_text())
    ]
    assert found == []
