"""Plain-text e-mails carry what people typed as they typed it, and one-line subjects."""

from pathlib import Path

import pytest
from django.conf import settings
from django.core import mail
from django.utils import timezone

from accounts.permissions import Role
from accounts.services import memberships, registration
from core.emails import render_email
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

NAME = 'AT&T <Labs> "R&D"'
ESCAPES = ("&amp;", "&lt;", "&gt;", "&quot;", "&#x27;", "&#39;")


def _no_escapes(text: str) -> None:
    for escape in ESCAPES:
        assert escape not in text, (escape, text)


def test_an_invitation_names_the_organization_exactly(django_capture_on_commit_callbacks):
    organization = OrganizationFactory(name=NAME)
    inviter = MembershipFactory(
        organization=organization, role=Role.OWNER, user__full_name="Dana O'Brien & Sons"
    ).user
    with django_capture_on_commit_callbacks(execute=True):
        memberships.invitation_create(
            organization=organization, actor=inviter, email="new@example.com", role=Role.ADMIN
        )

    [message] = mail.outbox
    assert message.subject == f"Dana O'Brien & Sons invited you to {NAME} on Hyperblock"
    assert "\n" not in message.subject
    assert (
        "Dana O'Brien & Sons (" + inviter.email + f") invited you to join {NAME} on Hyperblock "
        "as admin." in message.body
    )
    _no_escapes(message.subject)
    _no_escapes(message.body)


def test_a_verification_mail_greets_the_person_as_they_typed_their_name(
    django_capture_on_commit_callbacks,
):
    user = UserFactory(email="r&d@example.com", full_name='Zoë&"Z" <Lab>', email_verified_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        registration.email_verification_send(user=user)

    [message] = mail.outbox
    assert message.subject == "Verify your e-mail address for Hyperblock"
    assert message.body.startswith('Hello Zoë&"Z",\n')
    assert "Please confirm that r&d@example.com is your address" in message.body
    _no_escapes(message.body)


def test_a_line_break_in_a_name_stays_in_a_one_line_subject():
    organization = OrganizationFactory.build(name="AT&T\r\nLabs")
    inviter = UserFactory.build(full_name="Dana\nO'Brien", email="dana@example.com")
    invitation = memberships.Invitation(role=Role.MEMBER, expires_at=timezone.now())

    subject, body = render_email(
        template="invitation",
        context={
            "invitation": invitation,
            "organization": organization,
            "inviter": inviter,
            "url": "http://127.0.0.1:8000/invitations/x/",
        },
    )

    assert subject == "Dana O'Brien invited you to AT&T Labs on Hyperblock"
    # The body starts where the template's body starts, not with the rest of a broken subject.
    assert body.startswith("Hello,\n\nDana\nO'Brien (dana@example.com) invited you to join AT&T")


APPS = ("core", "accounts", "capacity", "billing", "backoffice", "portal")
SENDERS = (
    "send_mail(",
    "send_mass_mail(",
    "EmailMessage(",
    "EmailMultiAlternatives(",
    "mail_admins(",
)


def test_every_e_mail_is_sent_by_the_one_queue_task():
    """Only core.tasks.send_email hands mail to Django, and only core.emails feeds it: every
    other sender would skip the unescaped rendering and the one-line subject."""
    base = Path(settings.BASE_DIR)
    senders = sorted(
        str(path.relative_to(base))
        for app in APPS
        for path in (base / app).rglob("*.py")
        if any(sender in path.read_text() for sender in SENDERS)
    )
    assert senders == ["accounts/forms.py", "core/tasks.py"]
    # The password-reset form's send_mail is an override that queues through core.emails.
    assert (
        'queue_email(to=to_email, template="password_reset"'
        in (base / "accounts/forms.py").read_text()
    )
