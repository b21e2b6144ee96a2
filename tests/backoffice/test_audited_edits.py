"""Plain admin edits (inventory, catalog, users, groups) are in the audit log too."""

import pytest
from django.contrib.auth.models import Group

from capacity.models import DurationDiscount, Region
from core.models import AuditEvent
from tests.factories import UserFactory

from .conftest import make_staff, verified_client

pytestmark = pytest.mark.django_db


def events(action: str) -> list[tuple]:
    return list(
        AuditEvent.objects.filter(action=action)
        .order_by("id")
        .values_list("actor__email", "actor_kind", "object_repr", "data")
    )


def test_operations_adding_and_changing_a_region_is_audited():
    ops = make_staff("Operations", email="olive@hyperblock.test")
    client = verified_client(ops)
    response = client.post(
        "/admin/capacity/region/add/",
        {"code": "ap-south-1", "name": "AP South", "location": "Mumbai", "is_active": "on"},
    )
    assert response.status_code == 302
    region = Region.objects.get(code="ap-south-1")
    assert events("region.created") == [
        (
            "olive@hyperblock.test",
            "staff",
            "AP South (ap-south-1)",
            {
                "fields": {
                    "code": "ap-south-1",
                    "name": "AP South",
                    "location": "Mumbai",
                    "is_active": "True",
                }
            },
        )
    ]
    client.post(
        f"/admin/capacity/region/{region.pk}/change/",
        {
            "code": "ap-south-1",
            "name": "Asia Pacific South",
            "location": "Mumbai",
            "is_active": "on",
        },
    )
    assert events("region.updated") == [
        (
            "olive@hyperblock.test",
            "staff",
            "Asia Pacific South (ap-south-1)",
            {"changes": {"name": ["AP South", "Asia Pacific South"]}},
        )
    ]


def test_a_superuser_granting_a_group_and_setting_a_password_is_audited():
    admin_user = make_staff(superuser=True, email="ada@hyperblock.test")
    client = verified_client(admin_user)
    user = UserFactory(email="new.hire@hyperblock.test", full_name="New Hire")
    sales = Group.objects.get(name="Sales")
    page = client.get(f"/admin/accounts/user/{user.pk}/change/")
    form = page.context["adminform"].form
    data = {
        "email": user.email,
        "full_name": user.full_name,
        "email_verified_at_0": "",
        "email_verified_at_1": "",
        "is_active": "on",
        "is_staff": "on",
        "groups": [sales.pk],
    }
    assert set(data) - {"email_verified_at_0", "email_verified_at_1"} <= set(form.fields)
    assert client.post(f"/admin/accounts/user/{user.pk}/change/", data).status_code == 302
    user.refresh_from_db()
    assert user.is_staff
    assert list(user.groups.values_list("name", flat=True)) == ["Sales"]
    changed = events("user.updated")
    assert [(e[0], e[2]) for e in changed] == [
        ("ada@hyperblock.test", "new.hire@hyperblock.test"),
        ("ada@hyperblock.test", "new.hire@hyperblock.test"),
    ]
    assert changed[0][3]["changes"]["is_staff"] == ["False", "True"]
    assert changed[1][3] == {"changes": {"groups": ["", "Sales"]}}

    response = client.post(
        f"/admin/accounts/user/{user.pk}/password/",
        {"password1": "a-New-passphrase-77", "password2": "a-New-passphrase-77"},
    )
    assert response.status_code == 302
    assert [(e[0], e[2], e[3]) for e in events("user.password_set_by_staff")] == [
        ("ada@hyperblock.test", "new.hire@hyperblock.test", {})
    ]
    assert "a-New-passphrase-77" not in str(list(AuditEvent.objects.values_list("data", flat=True)))


def test_deleting_a_discount_is_audited():
    discount = DurationDiscount.objects.create(min_hours=168, percent=5, label="7+ days")
    client = verified_client(make_staff(superuser=True, email="ada@hyperblock.test"))
    response = client.post(
        f"/admin/capacity/durationdiscount/{discount.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    assert DurationDiscount.objects.count() == 0
    assert events("durationdiscount.deleted") == [
        ("ada@hyperblock.test", "staff", "7+ days: 5.00%", {})
    ]


def test_an_invitation_page_never_shows_its_token_digest():
    from accounts.services.memberships import invitation_create
    from tests.conftest import member_of
    from tests.factories import OrganizationFactory

    org = OrganizationFactory()
    invitation, token = invitation_create(
        organization=org, actor=member_of(org, "owner"), email="new@example.com", role="member"
    )
    client = verified_client(make_staff("Sales"))
    page = client.get(f"/admin/accounts/invitation/{invitation.pk}/change/").content.decode()
    assert "new@example.com" in page
    assert invitation.token_digest not in page
    assert token not in page
