import pytest
from django.urls import reverse

from portal.models import AuditEvent
from tests.conftest import client_for


def test_audit_events_record_actor_address_and_request(organization, owner):
    client = client_for(owner)
    client.post(
        reverse("organization-settings", args=[organization.slug]),
        {"name": "New Name", "country": "DE", "billing_email": organization.billing_email},
        HTTP_X_REQUEST_ID="req-1234567890",
        REMOTE_ADDR="203.0.113.7",
    )
    event = AuditEvent.objects.get(action="organization.updated")
    assert (event.actor, event.actor_kind, event.actor_email) == (owner, "customer", owner.email)
    assert event.organization == organization
    assert (event.object_type, event.object_id) == ("accounts.organization", str(organization.pk))
    assert event.data == {"changes": {"name": [event.data["changes"]["name"][0], "New Name"]}}
    assert (event.ip_address, event.request_id) == ("203.0.113.7", "req-1234567890")


def test_audit_events_cannot_be_changed_or_deleted(organization, owner):
    client_for(owner).post(
        reverse("organization-settings", args=[organization.slug]),
        {"name": "Again", "country": "DE", "billing_email": organization.billing_email},
    )
    event = AuditEvent.objects.get()
    event.action = "forged"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    assert AuditEvent.objects.get().action == "organization.updated"
