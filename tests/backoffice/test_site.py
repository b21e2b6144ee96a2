"""Staff sign in to the back office with a password and then a TOTP code."""

import re

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from backoffice import demo
from backoffice.roles import STAFF_GROUPS
from core.models import AuditEvent
from tests.factories import PASSWORD, UserFactory

from .conftest import make_staff

pytestmark = pytest.mark.django_db


def code_for(device: TOTPDevice, offset: int = 0) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = totp.time + offset * device.step
    return f"{totp.token():06d}"


def password_login(client: Client, email: str, next_url: str = "/admin/") -> object:
    return client.post(
        f"/admin/login/?next={next_url}",
        {"username": email, "password": PASSWORD, "next": next_url},
    )


def test_groups_hold_exactly_the_table_after_migrating():
    held = {
        group.name: {
            f"{p.content_type.app_label}.{p.codename}"
            for p in group.permissions.select_related("content_type")
        }
        for group in Group.objects.prefetch_related("permissions")
    }
    assert held == {name: set(perms) for name, perms in STAFF_GROUPS.items()}
    # Every permission the table names is real (a typo would have failed the migration).
    assert Permission.objects.filter(codename="drain_node").count() == 1


def test_password_alone_does_not_open_the_admin_and_leads_to_enrolment():
    user = make_staff("Sales")
    client = Client()
    response = password_login(client, user.email)
    assert response.status_code == 302
    assert response.url == "/admin/two-factor/?next=%2Fadmin%2F"
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/accounts/organization/").status_code == 302

    page = client.get(response.url)
    assert page.status_code == 200
    assert b"Set up two-factor sign-in" in page.content
    assert b"<svg" in page.content  # the QR code
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed is False
    secret = re.search(rb'two-factor-secret">([A-Z2-7 ]+)<', page.content).group(1)
    assert secret.replace(b" ", b"").decode() == demo.base32(device.bin_key)

    # Reloading the page keeps the same secret, so a half-done set-up can be finished.
    client.get(response.url)
    assert TOTPDevice.objects.filter(user=user).count() == 1

    done = client.post("/admin/two-factor/", {"code": code_for(device), "next": "/admin/"})
    assert done.status_code == 302
    assert done.url == "/admin/"
    device.refresh_from_db()
    assert device.confirmed is True
    assert client.get("/admin/").status_code == 200
    assert list(
        AuditEvent.objects.filter(actor=user).order_by("id").values_list("action", flat=True)
    ) == ["staff.second_factor_enrolled", "staff.signed_in"]


def test_a_wrong_code_is_refused_and_the_admin_stays_closed(settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 60  # seconds after the first failure
    user = make_staff("Finance")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = Client()
    password_login(client, user.email)
    page = client.get("/admin/two-factor/")
    assert b"Enter the 6-digit code" in page.content
    wrong = f"{(int(code_for(device)) + 1) % 1_000_000:06d}"
    response = client.post("/admin/two-factor/", {"code": wrong})
    assert response.status_code == 200
    assert b"That code is not right" in response.content
    assert client.get("/admin/").status_code == 302
    letters = client.post("/admin/two-factor/", {"code": "abc"})
    assert b"Enter the 6 digits your authenticator app shows." in letters.content
    # After a failure django-otp makes the device wait before the next try.
    device.refresh_from_db()
    assert device.throttling_failure_count == 1
    throttled = client.post("/admin/two-factor/", {"code": code_for(device)})
    assert b"Too many wrong codes" in throttled.content
    assert client.get("/admin/").status_code == 302


def test_a_code_from_a_confirmed_device_opens_the_admin_and_next_stays_on_site():
    user = make_staff("Operations")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = Client()
    password_login(client, user.email, "/admin/capacity/node/")
    response = client.post(
        "/admin/two-factor/", {"code": code_for(device), "next": "https://evil.example/"}
    )
    assert response.url == "/admin/"  # an outside address is never followed
    assert client.get("/admin/capacity/node/").status_code == 200


def test_another_users_device_in_the_session_does_not_count():
    staff = make_staff("Sales")
    other = make_staff("Sales")
    device = TOTPDevice.objects.create(user=other, name="phone", confirmed=True)
    client = Client()
    client.force_login(staff)
    session = client.session
    session["otp_device_id"] = device.persistent_id
    session.save()
    assert client.get("/admin/").status_code == 302


def test_customers_never_reach_the_second_factor_or_the_admin():
    customer = UserFactory()
    client = Client()
    response = password_login(client, customer.email)
    assert response.status_code == 200  # the login form again, with Django's message
    assert b"staff account" in response.content
    client.force_login(customer)
    assert client.get("/admin/two-factor/").url == "/admin/login/?next=%2Fadmin%2F"
    assert client.get("/admin/").status_code == 302


def test_the_second_factor_can_be_relaxed_by_setting(settings):
    settings.STAFF_OTP_REQUIRED = False
    user = make_staff("Sales")
    client = Client()
    response = password_login(client, user.email)
    assert response.url == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_the_production_settings_require_the_second_factor():
    from portal.settings import base

    assert base.STAFF_OTP_REQUIRED is True


def test_seed_demo_puts_staff_in_groups_with_a_stable_authenticator(monkeypatch, capsys):
    monkeypatch.setenv("DEMO_PASSWORD", "demo-password-for-tests")
    call_command("seed_demo")
    first = dict(TOTPDevice.objects.values_list("user__email", "key"))
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert dict(TOTPDevice.objects.values_list("user__email", "key")) == first
    assert sorted(first) == [
        "admin@example.com",
        "finance@example.com",
        "ops@example.com",
        "sales@example.com",
    ]
    from accounts.models import User

    groups = {
        u.email: sorted(u.groups.values_list("name", flat=True))
        for u in User.objects.filter(is_staff=True)
    }
    assert groups == {
        "admin@example.com": [],
        "finance@example.com": ["Finance"],
        "ops@example.com": ["Operations"],
        "sales@example.com": ["Sales"],
    }
    sales = User.objects.get(email="sales@example.com")
    key = demo.base32(demo.demo_key("sales@example.com", "demo-password-for-tests"))
    assert f"sales@example.com / demo-password-for-tests  (Sales; TOTP key {key})" in out
    assert "manage.py demo_totp_code sales@example.com" in out

    call_command("demo_totp_code", "sales@example.com")
    code = capsys.readouterr().out.strip()
    client = Client()
    client.post(
        "/admin/login/",
        {"username": sales.email, "password": "demo-password-for-tests", "next": "/admin/"},
    )
    assert client.post("/admin/two-factor/", {"code": code}).url == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_the_session_key_changes_when_the_second_factor_passes():
    user = make_staff("Sales")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = Client()
    password_login(client, user.email)
    after_password = client.session.session_key
    client.post("/admin/two-factor/", {"code": code_for(device)})
    assert client.session.session_key != after_password
    assert client.get("/admin/").status_code == 200


def test_authenticator_keys_are_never_shown_and_a_superuser_resets_a_lost_one():
    from .conftest import verified_client

    staff = make_staff("Operations", email="olive@hyperblock.test")
    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    root = make_staff(superuser=True, email="ada@hyperblock.test")
    client = verified_client(root)
    listing = client.get("/admin/otp_totp/totpdevice/").content.decode()
    detail = client.get(f"/admin/otp_totp/totpdevice/{device.pk}/change/").content.decode()
    for page in (listing, detail):
        assert device.key not in page
        assert "otpauth://" not in page
    config = client.get(f"/admin/otp_totp/totpdevice/{device.pk}/config/", follow=True)
    assert device.key not in config.content.decode()  # no QR page: Django's redirect only
    url = "/admin/otp_totp/totpdevice/"
    ask = client.post(url, {"action": "reset", "_selected_action": [device.pk]})
    assert b"olive@hyperblock.test" in ask.content
    no_reason = client.post(
        url, {"action": "reset", "_selected_action": [device.pk], "apply": "yes", "reason": " "}
    )
    assert b"Say why" in no_reason.content
    assert TOTPDevice.objects.filter(user=staff).count() == 1
    done = client.post(
        url,
        {
            "action": "reset",
            "_selected_action": [device.pk],
            "apply": "yes",
            "reason": "Lost phone",
        },
    )
    assert done.status_code == 302
    assert TOTPDevice.objects.filter(user=staff).count() == 0
    event = AuditEvent.objects.get(action="staff.second_factor_reset")
    assert (event.actor, event.object_repr, event.reason, event.data) == (
        root,
        "olive@hyperblock.test",
        "Lost phone",
        {"devices": 1},
    )
    # Staff outside the superusers cannot see the list at all.
    assert verified_client(make_staff("Sales")).get(url).status_code == 403
