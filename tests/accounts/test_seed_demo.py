import pytest
from django.core.management import CommandError, call_command

from accounts.models import Membership, Organization, User


@pytest.mark.django_db
def test_seed_demo_is_idempotent(monkeypatch, capsys):
    monkeypatch.setenv("DEMO_PASSWORD", "demo-password-for-tests")
    call_command("seed_demo")
    call_command("seed_demo")
    assert sorted(User.objects.values_list("email", "is_staff", "is_superuser")) == [
        ("admin@example.com", True, True),
        ("demo@example.com", False, False),
        ("finance@example.com", True, False),
        ("ops@example.com", True, False),
        ("sales@example.com", True, False),
    ]
    assert list(Organization.objects.values_list("slug", flat=True)) == ["demo"]
    assert list(Membership.objects.values_list("user__email", "role")) == [
        ("demo@example.com", "owner")
    ]
    demo = User.objects.get(email="demo@example.com")
    assert demo.is_verified
    assert demo.check_password("demo-password-for-tests")
    assert "demo@example.com / demo-password-for-tests" in capsys.readouterr().out


@pytest.mark.django_db
def test_seed_demo_refuses_production_settings(settings):
    settings.DEMO_DATA_ALLOWED = False
    with pytest.raises(CommandError, match="refuses to run"):
        call_command("seed_demo")
    assert User.objects.count() == 0
