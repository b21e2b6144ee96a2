"""One reason rule for staff actions and the services behind them: a reason longer than
STAFF_REASON_MAX_LENGTH (500) is refused with a message that says so and nothing changes; one
of 500 characters is kept whole, never cut. A customer's cancellation note is not held to it."""

import pytest
from django.contrib.messages import get_messages
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Organization
from accounts.services import organizations as account_services
from backoffice.roles import SALES
from capacity import services
from capacity.models import Reservation
from capacity.windows import Window
from core.errors import ServiceError
from core.models import AuditEvent
from tests.capacity.conftest import NEXT_HOUR, catalog, frozen_clock, hours  # noqa: F401
from tests.factories import OrganizationFactory

from .conftest import make_staff, verified_client

TOO_LONG = "x" * 501
LONGEST = "y" * 500
REFUSED = "Keep the reason to 500 characters or fewer."
ORGS = "/admin/accounts/organization/"


def suspend(client, org, reason):
    return client.post(
        ORGS,
        {"action": "suspend", "_selected_action": [org.pk], "apply": "yes", "reason": reason},
        follow=True,
    )


def test_the_suspend_action_refuses_a_501_character_reason_and_keeps_500_whole(db):
    org = OrganizationFactory()
    client = verified_client(make_staff(SALES))
    events = AuditEvent.objects.count()
    refused = suspend(client, org, TOO_LONG)
    assert REFUSED in refused.content.decode()
    org.refresh_from_db()
    assert (org.status, org.suspended_reason) == ("active", "")
    assert AuditEvent.objects.count() == events
    suspend(client, org, LONGEST)
    org.refresh_from_db()
    assert (org.status, org.suspended_reason) == ("suspended", LONGEST)
    event = AuditEvent.objects.get(action="organization.suspended")
    assert event.reason == LONGEST


def test_the_second_factor_reset_refuses_a_501_character_reason_and_keeps_500_whole(db):
    staff = make_staff("Operations")
    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    client = verified_client(make_staff(superuser=True))
    url = "/admin/otp_totp/totpdevice/"
    data = {"action": "reset", "_selected_action": [device.pk], "apply": "yes"}
    refused = client.post(url, {**data, "reason": TOO_LONG})
    assert REFUSED in refused.content.decode()
    assert TOTPDevice.objects.filter(user=staff).count() == 1
    assert not AuditEvent.objects.filter(action="staff.second_factor_reset").exists()
    done = client.post(url, {**data, "reason": LONGEST})
    assert done.status_code == 302
    assert TOTPDevice.objects.filter(user=staff).count() == 0
    assert AuditEvent.objects.get(action="staff.second_factor_reset").reason == LONGEST
    assert [str(m) for m in get_messages(done.wsgi_request)] == [
        f"Second factor reset for {staff.email}."
    ]


def test_the_suspension_service_refuses_a_501_character_reason(organization):
    sales = make_staff(SALES)
    with pytest.raises(ServiceError) as refused:
        account_services.organization_suspend(
            organization=organization, actor=sales, reason=TOO_LONG
        )
    assert refused.value.message == REFUSED
    organization.refresh_from_db()
    assert organization.status == Organization.Status.ACTIVE
    assert not AuditEvent.objects.filter(action="organization.suspended").exists()


def test_a_customer_cancellation_reason_is_not_a_staff_reason(catalog, organization, owner):
    """Customers are not held to the staff rule: a longer text cancels all the same and its
    first 500 characters are kept (the portal's form stops at 500 before that)."""
    reservation = services.reservation_create(
        organization=organization,
        user=owner,
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=1,
        window=Window(NEXT_HOUR, NEXT_HOUR + hours(24)),
    )
    services.reservation_cancel(reservation=reservation, actor=owner, reason=" " + LONGEST + "z")
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.CANCELED
    event = AuditEvent.objects.filter(action="reservation.transition").latest("pk")
    assert event.reason == LONGEST
