import pytest
from django.core.management import CommandError, call_command

from accounts.models import Membership, Organization, User
from capacity.models import Allocation, Cluster, GpuModel, ListPrice, Node, Region, Reservation


@pytest.mark.django_db
def test_seed_demo_is_idempotent(monkeypatch, capsys):
    monkeypatch.setenv("DEMO_PASSWORD", "demo-password-for-tests")
    call_command("seed_demo")
    bookings = list(Reservation.objects.values_list("public_id", "state"))
    call_command("seed_demo")
    assert sorted(User.objects.values_list("email", "is_staff", "is_superuser")) == [
        ("admin@example.com", True, True),
        ("demo@example.com", False, False),
        ("finance@example.com", True, False),
        ("ml-platform@northwind.example", False, False),
        ("ops@example.com", True, False),
        ("sales@example.com", True, False),
    ]
    assert sorted(Organization.objects.values_list("slug", flat=True)) == ["demo", "northwind"]
    assert sorted(Membership.objects.values_list("user__email", "organization__slug", "role")) == [
        ("demo@example.com", "demo", "owner"),
        ("ml-platform@northwind.example", "northwind", "owner"),
    ]
    demo = User.objects.get(email="demo@example.com")
    assert demo.is_verified
    assert demo.check_password("demo-password-for-tests")
    assert "demo@example.com / demo-password-for-tests" in capsys.readouterr().out
    # The catalog: 3 regions x 3 GPU models x 2 clusters x 16 nodes, every pool priced.
    assert (Region.objects.count(), GpuModel.objects.count(), Cluster.objects.count()) == (3, 3, 18)
    assert Node.objects.count() == 288
    assert ListPrice.objects.count() == 9
    # The other customer's bookings are made once, all confirmed on invoice terms.
    assert list(Reservation.objects.values_list("public_id", "state")) == bookings
    assert {state for _, state in bookings} == {"scheduled"}
    assert Allocation.objects.count() == sum(
        Reservation.objects.values_list("node_count", flat=True)
    )


@pytest.mark.django_db
def test_seed_demo_refuses_production_settings(settings):
    settings.DEMO_DATA_ALLOWED = False
    with pytest.raises(CommandError, match="refuses to run"):
        call_command("seed_demo")
    assert User.objects.count() == 0


def test_seeding_leaves_the_app_registry_as_it_was(db):
    """Making the staff groups in-process must not strip the running apps of their models
    modules: Django would then never make their permissions again (after a flush, say)."""
    from django.apps import apps

    from backoffice.roles import sync_staff_groups

    before = {config.label: config.models_module for config in apps.get_app_configs()}
    sync_staff_groups(apps)
    after = {config.label: config.models_module for config in apps.get_app_configs()}
    assert after == before
    assert after["accounts"] is not None
