"""What browsers are told: the Content Security Policy, the other security headers, and the
session's idle and absolute timeouts."""

import re
import time
from pathlib import Path

import pytest
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.test import Client, RequestFactory
from django.urls import reverse

from core.middleware import SessionTimeoutMiddleware
from core.security import SecurityHeadersMiddleware
from tests.conftest import client_for
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def _policy(response) -> dict[str, list[str]]:
    directives = (d.strip().split() for d in response["Content-Security-Policy"].split(";"))
    return {d[0]: d[1:] for d in directives if d}


def test_portal_pages_get_the_policy_with_stripe_itself(organization, owner, settings):
    settings.STRIPE_API_BASE = ""
    settings.STRIPE_JS_URL = "https://js.stripe.com/v3/"
    response = client_for(owner).get(reverse("dashboard", args=[organization.slug]))
    assert _policy(response) == {
        "default-src": ["'self'"],
        "script-src": ["'self'", "https://js.stripe.com", "https://*.js.stripe.com"],
        "style-src": ["'self'"],
        "style-src-elem": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:", "https://*.stripe.com"],
        "font-src": ["'self'"],
        "connect-src": ["'self'", "https://api.stripe.com"],
        "frame-src": [
            "'self'",
            "https://js.stripe.com",
            "https://*.js.stripe.com",
            "https://hooks.stripe.com",
        ],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }


def test_a_stripe_emulator_is_allowed_instead_of_stripe(settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:8420"
    settings.STRIPE_JS_URL = "http://127.0.0.1:8420/js.stripe.com/v3/"
    policy = _policy(Client().get(reverse("login")))
    assert policy["script-src"] == ["'self'", "http://127.0.0.1:8420"]
    assert policy["connect-src"] == ["'self'", "http://127.0.0.1:8420"]
    assert policy["frame-src"] == ["'self'", "http://127.0.0.1:8420"]
    assert policy["img-src"] == ["'self'", "data:"]


def test_a_style_block_carries_the_nonce_the_policy_names():
    request = RequestFactory().get("/")
    middleware = SecurityHeadersMiddleware(lambda request: HttpResponse())
    middleware.process_request(request)
    html = render_to_string("500.html", request=request)  # the one page with its own style
    nonce = re.search(r'<style nonce="([^"]+)">', html).group(1)
    response = middleware.process_response(request, HttpResponse(html))
    assert _policy(response)["style-src-elem"] == ["'self'", f"'nonce-{nonce}'"]


def test_a_page_without_a_style_block_names_no_nonce():
    response = Client().get(reverse("login"))
    assert "'nonce-" not in response["Content-Security-Policy"]


def test_the_other_security_headers(owner):
    response = Client().get(reverse("login"))
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response["Permissions-Policy"] == (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=()"
    )


def test_no_template_runs_inline_script():
    """The policy has no 'unsafe-inline' for scripts: an inline <script> or an on...= handler
    would silently stop working in the browser, so none may be written."""
    offenders = []
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            if "src=" not in tag and "application/json" not in tag:
                offenders.append(f"{path.relative_to(TEMPLATES)}: {tag}")
        offenders += [
            f"{path.relative_to(TEMPLATES)}: {m}" for m in re.findall(r"\son[a-z]+=\"", text)
        ]
        offenders += [
            f"{path.relative_to(TEMPLATES)}: {tag}"
            for tag in re.findall(r"<style(?![^>]*nonce=)[^>]*>", text)
        ]
    assert offenders == []


def test_the_api_docs_page_loads_its_script_from_a_url():
    response = Client().get(reverse("api-docs"))
    assert response.status_code == 200
    scripts = re.findall(r"<script\b[^>]*>", response.text)
    assert len(scripts) == 3  # Swagger UI, its preset, and its set-up from the page's own URL
    assert all("src=" in tag for tag in scripts)
    # Swagger UI draws with style elements of its own: allowed there, and only there.
    policy = _policy(response)
    assert policy["style-src-elem"] == ["'self'", "'unsafe-inline'"]
    assert policy["script-src"][0] == "'self'"
    assert "'unsafe-inline'" not in policy["script-src"]


# --- Sessions --------------------------------------------------------------------------------


def _backdate(client: Client, *, started: float, seen: float) -> None:
    session = client.session
    session[SessionTimeoutMiddleware.STARTED] = time.time() - started
    session[SessionTimeoutMiddleware.SEEN] = time.time() - seen
    session.save()


def _signed_in(client: Client, organization) -> bool:
    return client.get(reverse("dashboard", args=[organization.slug])).status_code == 200


def test_signing_in_starts_a_new_session(owner):
    client = Client()
    client.get(reverse("login"))
    client.session.save()
    before = client.session.session_key
    client.post(reverse("login"), {"username": owner.email, "password": PASSWORD})
    assert client.session.session_key not in (None, before)


def test_an_idle_session_is_signed_out(organization, owner, settings):
    client = client_for(owner)
    assert _signed_in(client, organization)
    idle = settings.SESSION_IDLE_TIMEOUT.total_seconds()
    _backdate(client, started=idle + 5, seen=idle - 5)
    assert _signed_in(client, organization)
    _backdate(client, started=idle + 5, seen=idle + 5)
    response = client.get(reverse("dashboard", args=[organization.slug]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    page = client.get(response["Location"])
    assert "You were signed out after 60 minutes without activity." in page.text


def test_a_busy_session_ends_at_the_absolute_timeout(organization, owner, settings):
    client = client_for(owner)
    assert _signed_in(client, organization)
    absolute = settings.SESSION_ABSOLUTE_TIMEOUT.total_seconds()
    _backdate(client, started=absolute - 5, seen=1)
    assert _signed_in(client, organization)
    _backdate(client, started=absolute + 5, seen=1)
    assert not _signed_in(client, organization)


def test_activity_is_written_at_most_once_a_minute(organization, owner):
    client = client_for(owner)
    assert _signed_in(client, organization)
    _backdate(client, started=100, seen=30)
    recorded = client.session[SessionTimeoutMiddleware.SEEN]
    assert _signed_in(client, organization)
    assert client.session[SessionTimeoutMiddleware.SEEN] == recorded
    _backdate(client, started=100, seen=61)
    assert _signed_in(client, organization)
    assert time.time() - client.session[SessionTimeoutMiddleware.SEEN] < 5
