"""Access that ends: keys stop with the person behind them, stay within that person's role,
service keys outlive people, rotation cannot be chained, operators' keys, key verification."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts import api_keys
from accounts.guards import require_permission
from accounts.models import ApiKey, Membership, User
from accounts.permissions import Permission, Role
from accounts.services import memberships, users
from capacity.models import Reservation
from core.errors import NotAllowed, ServiceError
from core.models import AuditEvent
from tests.api.test_api import ALL, BLOCK, api, error, gateway_key, key_for
from tests.conftest import member_of

RESERVATIONS = "/api/v1/reservations/"


def _membership(user, organization):
    return Membership.objects.get(user=user, organization=organization)


# --- The maker goes -------------------------------------------------------------------------


def test_a_plain_save_deactivation_stops_the_key_within_the_cache_time(
    catalog, organization, owner, frozen_clock
):
    key = key_for(organization, owner)
    assert api(key).get(RESERVATIONS).status_code == 200  # cached now
    owner.is_active = False
    owner.save()  # as the admin form or a script would: no service, no cache drop
    frozen_clock.shift(timedelta(seconds=6))
    assert error(api(key).get(RESERVATIONS)) == (401, "key_owner_inactive")
    # Refused once for the reason, then revoked for good (audited) as the services would have.
    event = AuditEvent.objects.get(action="api_key.revoked")
    assert (event.actor, event.data) == (
        None,
        {"reason": "key_owner_inactive", "maker": owner.email},
    )
    User.objects.filter(pk=owner.pk).update(is_active=True)
    frozen_clock.shift(timedelta(seconds=6))
    assert error(api(key).get(RESERVATIONS)) == (401, "revoked_key")


def test_a_membership_deleted_by_hand_stops_the_key(catalog, organization, frozen_clock):
    admin = member_of(organization, Role.ADMIN)
    key = key_for(organization, admin)
    assert api(key).get(RESERVATIONS).status_code == 200
    Membership.objects.filter(user=admin).delete()
    frozen_clock.shift(timedelta(seconds=6))
    assert error(api(key).get(RESERVATIONS)) == (401, "key_owner_left")


def test_removing_a_member_revokes_their_keys_at_once_and_audited(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    admin = member_of(organization, Role.ADMIN)
    key = key_for(organization, admin)
    assert api(key).get(RESERVATIONS).status_code == 200  # cached now
    with django_capture_on_commit_callbacks(execute=True):
        memberships.membership_remove(membership=_membership(admin, organization), actor=owner)
    assert error(api(key).get(RESERVATIONS)) == (401, "revoked_key")  # same process: at once
    record = ApiKey.objects.get(created_by=admin)
    assert record.revoked_at is not None
    event = AuditEvent.objects.get(action="api_key.revoked")
    assert (event.actor, event.object_id, event.data) == (
        owner,
        str(record.pk),
        {"reason": "membership.removed", "maker": admin.email},
    )
    # Joining again does not bring the key back: the revocation is permanent.
    Membership.objects.create(user=admin, organization=organization, role=Role.ADMIN)
    assert error(api(key).get(RESERVATIONS)) == (401, "revoked_key")


def test_deactivating_a_user_revokes_their_keys_for_good(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    member = member_of(organization, Role.MEMBER)
    key = key_for(organization, member, scopes=["reservations:read"])
    assert api(key).get(RESERVATIONS).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        users.user_deactivate(user=member, actor=None, reason="left the company")
    assert error(api(key).get(RESERVATIONS)) == (401, "revoked_key")
    User.objects.filter(pk=member.pk).update(is_active=True)
    assert error(api(key).get(RESERVATIONS)) == (401, "revoked_key")
    assert list(AuditEvent.objects.values_list("action", flat=True).order_by("id"))[-2:] == [
        "user.deactivated",
        "api_key.revoked",
    ]


def test_require_permission_refuses_an_inactive_user(organization, owner):
    owner.is_active = False
    owner.save()
    with pytest.raises(NotAllowed) as refused:
        require_permission(
            actor=owner, organization=organization, permission=Permission.VIEW_ORGANIZATION
        )
    assert refused.value.code == "user_inactive"


# --- Scopes within the role -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "scope"),
    [(Role.MEMBER, "billing:read"), (Role.MEMBER, "keys:write"), (Role.BILLING, "inference")],
)
def test_a_key_carries_only_scopes_the_role_allows(organization, role, scope):
    user = member_of(organization, role)
    if role == Role.BILLING:  # billing members manage no keys; an operator mints for them
        with pytest.raises(ServiceError) as refused:
            api_keys.api_key_create_for_operator(
                organization=organization, name="x", scopes=[scope], user=user
            )
    else:
        with pytest.raises(NotAllowed) as refused:
            api_keys.api_key_create(organization=organization, actor=user, name="x", scopes=[scope])
    assert (refused.value.code, refused.value.param) == ("scope_beyond_role", "scopes")
    assert scope in refused.value.message
    assert ApiKey.objects.count() == 0


def test_a_demoted_admins_broad_key_is_refused_at_once(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    admin = member_of(organization, Role.ADMIN)
    key = key_for(organization, admin, scopes=["reservations:read", "billing:read"])
    assert api(key).get(RESERVATIONS).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        memberships.membership_role_change(
            membership=_membership(admin, organization), actor=owner, role=Role.MEMBER
        )
    response = api(key).get(RESERVATIONS)
    assert error(response) == (403, "scope_beyond_role")
    assert "billing:read" in response.json()["error"]["message"]
    # A key within the new role keeps working.
    narrow = key_for(organization, admin, scopes=["reservations:read"])
    assert api(narrow).get(RESERVATIONS).status_code == 200


def test_a_members_key_lists_only_their_own_keys(catalog, organization, owner):
    key_for(organization, owner, scopes=["keys:read"])
    member = member_of(organization, Role.MEMBER)
    mine = key_for(organization, member, scopes=["keys:read"])
    listed = api(mine).get("/api/v1/keys/").json()["results"]
    assert [k["created_by"] for k in listed] == [member.email]


def test_a_member_revokes_only_their_own_keys(organization, owner):
    owners, _ = api_keys.api_key_create(
        organization=organization, actor=owner, name="o", scopes=["reservations:read"]
    )
    member = member_of(organization, Role.MEMBER)
    with pytest.raises(NotAllowed):
        api_keys.api_key_revoke(api_key=owners, actor=member)
    owners.refresh_from_db()
    assert owners.revoked_at is None


# --- Service keys ---------------------------------------------------------------------------


def _service_key(organization, owner, scopes=ALL):
    return api_keys.api_key_create(
        organization=organization, actor=owner, name="pipeline", scopes=scopes, kind="service"
    )


def test_a_service_key_writes_as_itself_and_outlives_its_maker(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    record, key = _service_key(organization, owner)
    created = api(key).post(RESERVATIONS, BLOCK, content_type="application/json")
    assert created.status_code == 201, created.content
    event = AuditEvent.objects.get(action="api_key.created")
    assert (event.actor, event.data["kind"]) == (owner, "service")
    acted = AuditEvent.objects.filter(actor=record.service_user).exclude(actor=owner)
    assert acted.exists()
    assert {e.actor_email for e in acted} == {record.service_user.email}
    assert f"hbk_{record.public_id}_" in record.service_user.full_name
    assert Reservation.objects.count() == 1
    # The owner who made it leaves (another owner remains): the service key keeps working.
    second = member_of(organization, Role.OWNER)
    with django_capture_on_commit_callbacks(execute=True):
        memberships.membership_remove(membership=_membership(owner, organization), actor=second)
    assert api(key).get(RESERVATIONS).status_code == 200
    record.refresh_from_db()
    assert record.revoked_at is None
    # Its identity is not on the team.
    from accounts.selectors import memberships_for_org

    assert [m.user for m in memberships_for_org(organization)] == [second]


def test_a_service_key_whose_membership_was_deleted_stops(catalog, organization, owner):
    """Its identity's membership deleted by hand (a script, the admin): refused and revoked."""
    from django.core.cache import cache

    record, key = _service_key(organization, owner, scopes=["reservations:read"])
    assert api(key).get(RESERVATIONS).status_code == 200
    Membership.objects.filter(user=record.service_user).delete()
    cache.clear()  # as the cache time passing does
    refused = api(key).get(RESERVATIONS)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "key_owner_left")
    record.refresh_from_db()
    assert record.revoked_at is not None


def test_a_service_key_is_labelled_in_the_api(catalog, organization, owner):
    _record, key = _service_key(organization, owner, scopes=["keys:read"])
    personal = key_for(organization, owner, scopes=["keys:read"])
    listed = api(personal).get("/api/v1/keys/").json()["results"]
    assert sorted((k["name"], k["kind"]) for k in listed) == [
        ("ci", "personal"),
        ("pipeline", "service"),
    ]
    assert api(key).get("/api/v1/keys/").status_code == 200


def test_only_an_owner_makes_or_revokes_a_service_key(organization, owner):
    admin = member_of(organization, Role.ADMIN)
    with pytest.raises(NotAllowed):
        _service_key(organization, admin)
    record, _key = _service_key(organization, owner)
    with pytest.raises(NotAllowed):
        api_keys.api_key_revoke(api_key=record, actor=admin)
    api_keys.api_key_revoke(api_key=record, actor=owner)
    record.refresh_from_db()
    assert record.revoked_at is not None


# --- Rotation -------------------------------------------------------------------------------


def test_rotation_cannot_be_chained(organization, owner, frozen_clock):
    record, _key = api_keys.api_key_create(
        organization=organization, actor=owner, name="ci", scopes=["reservations:read"]
    )
    api_keys.api_key_rotate(api_key=record, actor=owner, grace=timedelta(hours=1))
    record.refresh_from_db()
    ends = record.revoked_at
    frozen_clock.shift(timedelta(minutes=50))
    with pytest.raises(ServiceError) as refused:
        api_keys.api_key_rotate(api_key=record, actor=owner, grace=timedelta(days=7))
    assert refused.value.code == "already_rotated"
    record.refresh_from_db()
    assert record.revoked_at == ends
    assert ApiKey.objects.count() == 2


def test_rotating_a_service_key_keeps_its_identity(organization, owner):
    record, _key = _service_key(organization, owner)
    new, _raw = api_keys.api_key_rotate(api_key=record, actor=owner, grace=timedelta(0))
    assert (new.kind, new.service_user) == ("service", record.service_user)


# --- Operators' keys ------------------------------------------------------------------------


def _command(*args):
    out, err = StringIO(), StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_an_operator_key_without_a_person_refuses_write_scopes(organization):
    with pytest.raises(CommandError, match="reservations:write"):
        _command("--org", organization.slug, "--name", "ops", "--scope", "reservations:write")
    assert ApiKey.objects.count() == 0


def test_an_operator_key_acts_for_the_member_named(catalog, organization):
    member = member_of(organization, Role.MEMBER)
    key, err = _command(
        "--org",
        organization.slug,
        "--name",
        "ops",
        "--scope",
        "reservations:write",
        "--user",
        member.email.upper(),
    )
    assert ApiKey.objects.get().created_by == member
    assert f"acting for {member.email}" in err
    created = api(key).post(RESERVATIONS, BLOCK, content_type="application/json")
    assert created.status_code == 201, created.content
    assert Reservation.objects.get().created_by == member


@pytest.mark.parametrize("scope", ["billing:read", "reservations:read"])
def test_an_operator_key_for_someone_stays_within_their_role_and_membership(
    organization, other_organization, scope
):
    outsider = other_organization.memberships.get().user
    member = member_of(organization, Role.MEMBER)
    who = member if scope == "billing:read" else outsider
    with pytest.raises(CommandError):
        _command("--org", organization.slug, "--name", "x", "--scope", scope, "--user", who.email)
    assert ApiKey.objects.count() == 0


# --- Verification for the model gateway -----------------------------------------------------


def test_only_a_platform_key_verifies_keys_and_verifying_is_not_using(catalog, organization, owner):
    customer = key_for(organization, owner, scopes=["inference", "usage:write"])
    asked = api(customer).post(
        "/api/v1/keys/verify/", {"key": customer}, content_type="application/json"
    )
    assert error(asked) == (403, "not_platform")
    ApiKey.objects.update(last_used_at=None)
    answer = api(gateway_key()).post(
        "/api/v1/keys/verify/", {"key": customer}, content_type="application/json"
    )
    assert answer.json()["valid"] is True
    assert ApiKey.objects.get(organization=organization).last_used_at is None


def test_keys_scopes_are_all_known_to_the_ceiling():
    from accounts.permissions import ALL_SCOPES, ROLE_SCOPE_CEILING

    named = set().union(*ROLE_SCOPE_CEILING.values()) - {ALL_SCOPES}
    assert named <= set(ApiKey.Scope.values)


def test_a_cold_key_check_with_its_maker_is_still_one_query(
    organization, owner, django_assert_num_queries
):
    from accounts.api_keys.authentication import api_key_authenticate

    _record, raw = api_keys.api_key_create(
        organization=organization, actor=owner, name="ci", scopes=["reservations:read"]
    )
    ApiKey.objects.update(last_used_at=timezone.now())  # no last-use write in this request
    with django_assert_num_queries(1):
        api_key_authenticate(raw)
    with django_assert_num_queries(0):
        api_key_authenticate(raw)


def test_a_service_keys_identity_cannot_be_given_a_password(organization, owner):
    record, _key = _service_key(organization, owner)
    identity = record.service_user
    identity.set_password("a-long-enough-password")
    identity.save()
    identity.refresh_from_db()
    assert identity.has_usable_password() is False


def test_mail_about_a_service_keys_reservation_goes_to_the_billing_address(
    catalog, organization, owner, mailoutbox, django_capture_on_commit_callbacks
):
    from capacity.notifications import notification_send

    _record, key = _service_key(organization, owner)
    api(key).post(RESERVATIONS, BLOCK, content_type="application/json")
    with django_capture_on_commit_callbacks(execute=True):
        notification_send(Reservation.objects.get(), "reservation_scheduled")
    assert [m.to for m in mailoutbox] == [[organization.billing_email]]
