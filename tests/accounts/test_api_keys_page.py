import re

import pytest
from django.urls import reverse

from accounts.api_keys.format import parse
from accounts.models import ApiKey
from accounts.permissions import Role
from tests.conftest import client_for, member_of
from tests.factories import PASSWORD


def page(org):
    return reverse("api-keys", args=[org.slug])


def reauthenticated(user):
    client = client_for(user)
    client.post(reverse("confirm-password"), {"password": PASSWORD, "next": "/"})
    return client


def test_creating_a_key_asks_for_the_password_then_shows_the_key_once(organization, owner):
    client = client_for(owner)
    asked = client.post(page(organization), {"name": "CI", "scopes": ["reservations:read"]})
    assert asked.status_code == 302
    assert asked["Location"] == f"{reverse('confirm-password')}?next={page(organization)}"
    assert ApiKey.objects.count() == 0
    wrong = client.post(
        reverse("confirm-password"), {"password": "nope", "next": page(organization)}
    )
    assert wrong.status_code == 400
    client.post(reverse("confirm-password"), {"password": PASSWORD, "next": page(organization)})
    created = client.post(
        page(organization), {"name": "CI", "scopes": ["reservations:read", "usage:write"]}
    )
    shown = re.search(r'id="new-key">(hbk_[^<]+)<', created.content.decode()).group(1)
    record = ApiKey.objects.get()
    assert parse(shown) == record.public_id
    assert (record.name, record.scopes, record.created_by) == (
        "CI",
        ["reservations:read", "usage:write"],
        owner,
    )
    assert shown not in client.get(page(organization)).content.decode()  # never again


def test_the_password_check_lapses_after_ten_minutes(organization, owner, settings):
    settings.REAUTHENTICATION_MAX_AGE = settings.REAUTHENTICATION_MAX_AGE * 0
    client = reauthenticated(owner)
    assert (
        client.post(page(organization), {"name": "CI", "scopes": ["inference"]}).status_code == 302
    )
    assert ApiKey.objects.count() == 0


@pytest.mark.parametrize(
    ("role", "allowed"), [(Role.ADMIN, True), (Role.MEMBER, True), (Role.BILLING, False)]
)
def test_who_may_create_keys(organization, owner, role, allowed):
    client = reauthenticated(member_of(organization, role))
    response = client.post(page(organization), {"name": "k", "scopes": ["inference"]})
    assert response.status_code == (200 if allowed else 403)
    assert ApiKey.objects.count() == (1 if allowed else 0)


def test_bad_key_requests_change_nothing(organization, owner):
    client = reauthenticated(owner)
    response = client.post(page(organization), {"name": "", "scopes": ["root"]})
    assert response.status_code == 400
    assert set(response.context["form"].errors) == {"name", "scopes"}
    assert ApiKey.objects.count() == 0


def test_revoke_and_rotate_from_the_page(organization, owner):
    client = reauthenticated(owner)
    client.post(page(organization), {"name": "CI", "scopes": ["inference"]})
    record = ApiKey.objects.get()
    rotated = client.post(
        reverse("api-key-action", args=[organization.slug, record.public_id, "rotate"])
    )
    assert "The old key keeps working for 24 hours." in rotated.content.decode()
    new = ApiKey.objects.exclude(pk=record.pk).get()
    client.post(reverse("api-key-action", args=[organization.slug, new.public_id, "revoke"]))
    new.refresh_from_db()
    assert new.revoked_at is not None


def test_another_organizations_keys_cannot_be_touched(organization, owner, other_organization):
    theirs_owner = other_organization.memberships.get().user
    client = reauthenticated(theirs_owner)
    client.post(page(other_organization), {"name": "theirs", "scopes": ["inference"]})
    theirs = ApiKey.objects.get()
    mine = reauthenticated(owner)
    mine.post(reverse("api-key-action", args=[organization.slug, theirs.public_id, "revoke"]))
    assert mine.get(page(other_organization)).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_a_member_cannot_give_a_key_scopes_beyond_the_role(organization, owner):
    client = reauthenticated(member_of(organization, Role.MEMBER))
    response = client.post(
        page(organization), {"name": "k", "scopes": ["reservations:read", "billing:read"]}
    )
    assert response.status_code == 400
    assert response.context["form"].errors["scopes"] == [
        "Your role (member) cannot give a key billing:read."
    ]
    assert ApiKey.objects.count() == 0


def test_an_owner_makes_a_service_key_labelled_as_such(organization, owner):
    client = reauthenticated(owner)
    response = client.post(
        page(organization), {"name": "pipeline", "kind": "service", "scopes": ["billing:read"]}
    )
    assert response.status_code == 200
    record = ApiKey.objects.get()
    assert (record.kind, record.created_by, record.service_user.is_service) == (
        "service",
        owner,
        True,
    )
    assert 'data-testid="service-key">Service key<' in response.content.decode()


def test_an_admin_sees_no_service_choice_and_cannot_make_one(organization, owner):
    client = reauthenticated(member_of(organization, Role.ADMIN))
    assert 'name="kind"' not in client.get(page(organization)).content.decode()
    response = client.post(
        page(organization), {"name": "pipeline", "kind": "service", "scopes": ["billing:read"]}
    )
    assert response.status_code == 400
    assert ApiKey.objects.count() == 0


def test_a_member_sees_rotate_and_revoke_only_on_their_own_keys(organization, owner):
    from accounts import api_keys

    theirs, _ = api_keys.api_key_create(
        organization=organization, actor=owner, name="owners", scopes=["inference"]
    )
    member = member_of(organization, Role.MEMBER)
    mine, _ = api_keys.api_key_create(
        organization=organization, actor=member, name="mine", scopes=["inference"]
    )
    html = reauthenticated(member).get(page(organization)).content.decode()
    assert reverse("api-key-action", args=[organization.slug, mine.public_id, "revoke"]) in html
    assert (
        reverse("api-key-action", args=[organization.slug, theirs.public_id, "revoke"]) not in html
    )
    refused = reauthenticated(member).post(
        reverse("api-key-action", args=[organization.slug, theirs.public_id, "revoke"])
    )
    assert refused.status_code == 302
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
