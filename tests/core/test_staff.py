"""The staff kit's reason rule and staff-permission check."""

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings

from core.errors import NotAllowed, ServiceError
from core.staff import StaffReasonForm, reason_clean, require_staff_permission, staff_may
from tests.factories import UserFactory


def test_a_reason_is_stripped_and_kept_whole_up_to_the_limit():
    assert reason_clean("  Lost phone \n") == "Lost phone"
    assert reason_clean(" " + "x" * 500 + " ") == "x" * 500


def test_a_longer_reason_is_refused_with_the_limit_never_cut():
    with pytest.raises(ServiceError) as refused:
        reason_clean("x" * 501)
    assert (refused.value.message, refused.value.param) == (
        "Keep the reason to 500 characters or fewer.",
        "reason",
    )


@override_settings(STAFF_REASON_MAX_LENGTH=10)
def test_the_limit_is_the_setting():
    assert reason_clean("x" * 10) == "x" * 10
    with pytest.raises(ServiceError, match="^Keep the reason to 10 characters or fewer.$"):
        reason_clean("x" * 11)


def test_a_missing_reason_is_refused_only_where_required():
    with pytest.raises(ServiceError, match="^Say why: the reason goes into the audit log.$"):
        reason_clean("   ")
    with pytest.raises(ServiceError, match="^Tell us$"):
        reason_clean(None, missing="Tell us")
    assert reason_clean("  ", required=False) == ""


def test_the_form_applies_the_same_rule():
    assert StaffReasonForm({"reason": " " + "x" * 500}).is_valid()
    long = StaffReasonForm({"reason": "x" * 501})
    assert long.errors == {"reason": ["Keep the reason to 500 characters or fewer."]}
    empty = StaffReasonForm({"reason": "  "})
    assert empty.errors == {"reason": ["Say why: the reason goes into the audit log."]}

    class Optional(StaffReasonForm):
        reason_required = False

    assert Optional({"reason": ""}).is_valid()
    assert not Optional({"reason": "x" * 501}).is_valid()


@pytest.mark.django_db
def test_only_active_staff_with_the_permission_may():
    perm = Permission.objects.get(codename="change_organization")
    holder = UserFactory(is_staff=True)
    holder.user_permissions.add(perm)
    customer = UserFactory(is_staff=False)
    customer.user_permissions.add(perm)
    gone = UserFactory(is_staff=True, is_active=False)
    gone.user_permissions.add(perm)
    assert staff_may(holder, "accounts.change_organization")
    assert not staff_may(UserFactory(is_staff=True), "accounts.change_organization")
    for user in (customer, gone, None):
        assert not staff_may(user, "accounts.change_organization")
    require_staff_permission(holder, "accounts.change_organization", "change organizations")
    with pytest.raises(NotAllowed, match="^You are not allowed to change organizations.$"):
        require_staff_permission(customer, "accounts.change_organization", "change organizations")
