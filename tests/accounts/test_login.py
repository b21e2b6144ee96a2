from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from accounts.services.users import login_attempts_clean
from tests.factories import PASSWORD, UserFactory


@pytest.fixture
def user(db: None) -> User:
    return UserFactory(email="ada@example.com")


def _login(client, email: str, password: str):
    return client.post(reverse("login"), {"username": email, "password": password})


def test_login_with_any_capitalisation_signs_in(client, user):
    response = _login(client, "ADA@Example.com", PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.session["_auth_user_id"] == str(user.pk)


def test_wrong_password_gives_a_clear_message(client, user):
    response = _login(client, "ada@example.com", "nope")
    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        "That e-mail and password do not match an account."
    ]
    assert "_auth_user_id" not in client.session


def test_ten_failures_lock_the_account_for_fifteen_minutes(client, user):
    for _ in range(9):
        assert _login(client, "ada@example.com", "wrong").status_code == 200
    # Failures count per account, however the address is written.
    tenth = _login(client, "ADA@example.com", "wrong")
    assert tenth.status_code == 429
    # Now even the right password is refused, with a message that says why.
    locked = _login(client, "ada@example.com", PASSWORD)
    assert locked.status_code == 429
    assert b"locked for 15 minutes after 10 failed attempts" in locked.content
    assert "_auth_user_id" not in client.session
    # Another account is not affected.
    other = UserFactory(email="bob@example.com")
    assert _login(client, "bob@example.com", PASSWORD).status_code == 302
    assert client.session["_auth_user_id"] == str(other.pk)


def test_lock_lifts_after_the_cool_off(client, user):
    for _ in range(10):
        _login(client, "ada@example.com", "wrong")
    assert _login(client, "ada@example.com", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert _login(client, "ada@example.com", PASSWORD).status_code == 302


def test_cleaning_old_attempts_is_safe_to_repeat(client, user):
    for _ in range(3):
        _login(client, "ada@example.com", "wrong")
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert login_attempts_clean() == 1
    assert login_attempts_clean() == 0
    assert AccessAttempt.objects.count() == 0


def test_logout_needs_post(client, user):
    client.force_login(user)
    assert client.get(reverse("logout")).status_code == 405
    assert client.post(reverse("logout")).status_code == 302
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_password_reset_mails_a_link_that_sets_a_new_password(
    client, user, django_capture_on_commit_callbacks
):
    from django.core import mail

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("password-reset"), {"email": "ada@example.com"})
    assert response["Location"] == reverse("password-reset-done")
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject == "Reset your Hyperblock password"
    link = next(line for line in mail.outbox[0].body.splitlines() if "/password/reset/" in line)
    path = link.replace("http://127.0.0.1:8000", "")
    form_page = client.get(path, follow=True)
    assert form_page.status_code == 200
    assert form_page.context["validlink"] is True
    done = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "a-new-long-passphrase-7", "new_password2": "a-new-long-passphrase-7"},
    )
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password("a-new-long-passphrase-7")


@pytest.mark.django_db
def test_password_reset_for_an_unknown_address_sends_nothing_and_reveals_nothing(
    client, django_capture_on_commit_callbacks
):
    from django.core import mail

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("password-reset"), {"email": "nobody@example.com"})
    assert response["Location"] == reverse("password-reset-done")
    assert mail.outbox == []


def test_profile_changes_name_and_password(client, user):
    client.force_login(user)
    client.post(reverse("profile"), {"form": "profile", "full_name": "Ada Lovelace"})
    response = client.post(
        reverse("profile"),
        {
            "form": "password",
            "old_password": PASSWORD,
            "new_password1": "analytical-engine-1843",
            "new_password2": "analytical-engine-1843",
        },
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.full_name == "Ada Lovelace"
    assert user.check_password("analytical-engine-1843")
    # The session survives the password change.
    assert client.get(reverse("profile")).status_code == 200


def test_profile_refuses_a_wrong_old_password(client, user):
    client.force_login(user)
    response = client.post(
        reverse("profile"),
        {
            "form": "password",
            "old_password": "wrong",
            "new_password1": "analytical-engine-1843",
            "new_password2": "analytical-engine-1843",
        },
    )
    assert response.status_code == 200
    assert response.context["password_form"].errors["old_password"] == [
        "Your old password was entered incorrectly. Please enter it again."
    ]
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
