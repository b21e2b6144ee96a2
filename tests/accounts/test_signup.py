import re

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts.models import Membership, Organization, User
from accounts.permissions import Role
from core.models import AuditEvent
from tests.factories import OrganizationFactory, UserFactory

VALID = {
    "full_name": "Grace Hopper",
    "email": "Grace@Example.COM",
    "password": "compilers-are-fun-1952",
    "organization_name": "Cobol Computing",
    "organization_slug": "cobol",
    "country": "US",
    "billing_email": "",
}


def _counts() -> tuple[int, int, int, int]:
    return (
        User.objects.count(),
        Organization.objects.count(),
        Membership.objects.count(),
        AuditEvent.objects.count(),
    )


@pytest.mark.django_db
def test_signup_creates_user_organization_and_owner_and_mails_a_link(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("signup"), VALID)

    assert response.status_code == 302
    assert response["Location"] == "/signup/sent/"
    user = User.objects.get()
    assert user.email == "grace@example.com"
    assert user.full_name == "Grace Hopper"
    assert user.is_verified is False
    assert user.password.startswith("md5$")  # the test hasher; production uses Argon2
    org = Organization.objects.get()
    assert (org.name, org.slug, org.country.code, org.billing_email) == (
        "Cobol Computing",
        "cobol",
        "US",
        "grace@example.com",
    )
    assert list(Membership.objects.values_list("user", "organization", "role")) == [
        (user.pk, org.pk, Role.OWNER)
    ]
    assert list(AuditEvent.objects.order_by("id").values_list("action", flat=True)) == [
        "user.created",
        "organization.created",
    ]
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["grace@example.com"]
    assert message.subject == "Verify your e-mail address for Hyperblock"
    assert re.search(r"http://127\.0\.0\.1:8000/verify/[^/\s]+/", message.body)
    # Not signed in: the answer is the one an address that has an account gets.
    assert "_auth_user_id" not in client.session
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert "We sent a message to <strong>grace@example.com</strong>." in page.text


@pytest.mark.django_db
def test_signup_uses_the_given_billing_email(client):
    client.post(reverse("signup"), {**VALID, "billing_email": "AP@Cobol.example"})
    assert Organization.objects.get().billing_email == "ap@cobol.example"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"email": "not-an-email"}, "email", "Enter a valid email address."),
        ({"password": "short1"}, "password", "This password is too short."),
        ({"password": "password123"}, "password", "This password is too common."),
        ({"password": "83749201938475"}, "password", "This password is entirely numeric."),
        ({"password": "grace@example.com"}, "password", "The password is too similar"),
        ({"organization_slug": "Bad Slug!"}, "organization_slug", "Use 3 to 40 lower-case"),
        ({"organization_slug": "ab"}, "organization_slug", "Use 3 to 40 lower-case"),
        ({"organization_slug": "-abc"}, "organization_slug", "Use 3 to 40 lower-case"),
        ({"organization_slug": "ab--cd"}, "organization_slug", "Use single hyphens only."),
        ({"organization_slug": "admin"}, "organization_slug", "“admin” is reserved"),
        ({"organization_name": ""}, "organization_name", "This field is required."),
        ({"country": "XX"}, "country", "Select a valid choice."),
        ({"country": ""}, "country", "This field is required."),
    ],
)
def test_signup_rejects_bad_input_and_writes_nothing(client, changes, field, message):
    before = _counts()
    response = client.post(reverse("signup"), {**VALID, **changes})
    assert response.status_code == 200
    errors = response.context["form"].errors[field]
    assert any(message in error for error in errors), errors
    assert _counts() == before


@pytest.mark.django_db
def test_signup_with_a_taken_slug_is_refused_and_leaves_no_user_behind(client):
    OrganizationFactory(slug="cobol")
    before = _counts()
    response = client.post(reverse("signup"), VALID)
    assert response.context["form"].errors["organization_slug"] == [
        "This address is taken; choose another."
    ]
    assert _counts() == before
    assert not User.objects.filter(email="grace@example.com").exists()


@pytest.mark.django_db
def test_slug_check_suggests_an_address_and_reports_a_taken_one(client):
    OrganizationFactory(slug="taken-co")
    suggested = client.get(reverse("signup-slug"), {"organization_name": "Acme GPU Labs"})
    assert b"/o/acme-gpu-labs is available." in suggested.content
    assert b'value="acme-gpu-labs"' in suggested.content
    assert b'hx-swap-oob="true"' in suggested.content
    taken = client.get(reverse("signup-slug"), {"organization_slug": "taken-co"})
    assert b"This address is taken; choose another." in taken.content
    reserved = client.get(reverse("signup-slug"), {"organization_slug": "api"})
    assert "“api” is reserved; choose another.".encode() in reserved.content


@pytest.mark.django_db
def test_signed_in_user_is_sent_from_signup_to_their_console(client):
    user = UserFactory()
    client.force_login(user)
    response = client.get(reverse("signup"))
    assert response.status_code == 302
    assert response["Location"] == "/"


@pytest.mark.django_db
def test_signup_shows_every_problem_at_once(client):
    UserFactory(email="grace@example.com")
    OrganizationFactory(slug="cobol")
    before = _counts()
    response = client.post(reverse("signup"), {**VALID, "password": "short", "country": ""})
    errors = response.context["form"].errors
    assert "email" not in errors  # that the address has an account is not said
    assert errors["organization_slug"] == ["This address is taken; choose another."]
    assert errors["country"] == ["This field is required."]
    assert errors["password"][0].startswith("This password is too short.")
    assert _counts() == before


def _page(response) -> str:
    """The page without what differs per request anyway (CSRF token, CSP nonce)."""
    text = re.sub(r'"X-CSRFToken": "[^"]+"', "CSRF", response.text)
    return re.sub(r'nonce="[^"]+"', "NONCE", text)


def _sign_up(client, captured, data):
    with captured(execute=True):
        response = client.post(reverse("signup"), data)
    page = client.get(response["Location"]) if response.status_code == 302 else None
    return response, page


@pytest.mark.django_db
def test_signup_with_a_taken_address_answers_as_a_new_one_and_mails_the_owner(
    django_capture_on_commit_callbacks,
):
    owner = UserFactory(email="grace@example.com", full_name="Grace Hopper")
    password_before = owner.password
    before = _counts()

    new_response, new_page = _sign_up(
        Client(),
        django_capture_on_commit_callbacks,
        {**VALID, "email": "Ada@Example.com", "organization_slug": "engines"},
    )
    taken_response, taken_page = _sign_up(
        Client(), django_capture_on_commit_callbacks, {**VALID, "email": "GRACE@example.com"}
    )

    # The same answer, word for word but for the address typed.
    assert (new_response.status_code, new_response["Location"]) == (302, "/signup/sent/")
    assert (taken_response.status_code, taken_response["Location"]) == (302, "/signup/sent/")
    assert taken_page.status_code == new_page.status_code == 200
    assert _page(taken_page).replace("grace@example.com", "ada@example.com") == _page(new_page)
    # The new address has an account; the taken one got nothing new and nothing changed.
    assert User.objects.count() == before[0] + 1
    assert list(Organization.objects.values_list("slug", flat=True)) == ["engines"]
    assert not Organization.objects.filter(slug="cobol").exists()
    owner.refresh_from_db()
    assert (owner.password, owner.full_name) == (password_before, "Grace Hopper")
    assert not Membership.objects.filter(user=owner).exists()
    # Each address got its own e-mail.
    assert [(m.to, m.subject) for m in mail.outbox] == [
        (["ada@example.com"], "Verify your e-mail address for Hyperblock"),
        (["grace@example.com"], "Someone tried to sign up for Hyperblock with your address"),
    ]
    notice = mail.outbox[1].body
    assert notice.startswith("Hello Grace,\n")
    assert "http://127.0.0.1:8000/login/" in notice
    assert "http://127.0.0.1:8000/password/reset/" in notice
    assert "/verify/" not in notice


@pytest.mark.django_db
def test_notices_to_a_taken_address_stop_after_the_hourly_limit_with_the_same_answer(
    client, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_RATE_LIMITS = {**settings.EMAIL_RATE_LIMITS, "signup_existing_recipient": 2}
    UserFactory(email="grace@example.com")
    answers = []
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(reverse("signup"), VALID)
        answers.append((response.status_code, response["Location"]))
    assert answers == [(302, "/signup/sent/")] * 3
    assert [m.to for m in mail.outbox] == [["grace@example.com"]] * 2
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_the_verification_link_of_a_new_sign_up_leads_to_sign_in(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("signup"), VALID)
    link = re.search(r"http://127\.0\.0\.1:8000(/verify/[^/\s]+/)", mail.outbox[0].body)
    response = client.get(link.group(1), follow=True)
    assert response.redirect_chain == [("/login/", 302)]
    assert "Thank you: grace@example.com is verified." in response.text
    assert User.objects.get().is_verified is True
