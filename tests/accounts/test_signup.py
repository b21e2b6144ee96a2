import re

import pytest
from django.core import mail
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
    assert response["Location"] == "/o/cobol/"
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
    # Signed in straight away, but unverified: the dashboard says what to do.
    page = client.get("/o/cobol/")
    assert page.status_code == 200
    assert b'data-testid="verify-banner"' in page.content


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
def test_signup_with_an_existing_email_in_other_case_is_refused(client):
    UserFactory(email="grace@example.com")
    before = _counts()
    response = client.post(reverse("signup"), {**VALID, "email": "GRACE@example.com"})
    assert response.context["form"].errors["email"] == [
        "An account with this e-mail address already exists. Sign in instead."
    ]
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
    assert errors["email"] == [
        "An account with this e-mail address already exists. Sign in instead."
    ]
    assert errors["organization_slug"] == ["This address is taken; choose another."]
    assert errors["country"] == ["This field is required."]
    assert errors["password"][0].startswith("This password is too short.")
    assert _counts() == before
