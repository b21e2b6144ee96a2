import pytest
from django.urls import reverse

from core.models import AuditEvent
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


def test_the_database_refuses_to_rewrite_recorded_history(organization, owner, connection_vendor):
    """Below the model too: a queryset update, or deleting the user an event names (which would
    blank its actor), is refused by the database; on PostgreSQL a bulk delete is as well."""
    from django.db import DatabaseError, transaction

    from billing.models import LedgerEntry, WebhookEvent

    client_for(owner).post(
        reverse("organization-settings", args=[organization.slug]),
        {"name": "Again", "country": "DE", "billing_email": organization.billing_email},
    )
    WebhookEvent.objects.create(stripe_event_id="evt_1", type="charge.refunded", payload={})
    LedgerEntry.objects.create(
        organization=organization, kind="charge", amount=10, currency="usd", description="x"
    )
    attempts = [
        lambda: AuditEvent.objects.update(action="forged"),
        lambda: owner.delete(),
        lambda: WebhookEvent.objects.update(type="forged"),
        lambda: LedgerEntry.objects.update(amount=0),
    ]
    if connection_vendor == "postgresql":
        attempts += [
            lambda: AuditEvent.objects.all()._raw_delete(AuditEvent.objects.db),
            lambda: LedgerEntry.objects.all()._raw_delete(LedgerEntry.objects.db),
        ]
    for attempt in attempts:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    assert list(AuditEvent.objects.values_list("action", "actor")) == [
        ("organization.updated", owner.pk)
    ]
    assert list(WebhookEvent.objects.values_list("type", flat=True)) == ["charge.refunded"]
    assert list(LedgerEntry.objects.values_list("amount", flat=True)) == [10]


@pytest.fixture
def connection_vendor(db) -> str:
    from django.db import connection

    return connection.vendor


@pytest.mark.parametrize(
    ("hops", "forwarded", "recorded"),
    [
        (0, "198.51.100.1", "10.0.0.2"),  # no proxy: the connection's address
        (1, "198.51.100.1", "198.51.100.1"),
        (1, "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # the left entry is the client's word
        (2, "198.51.100.1, 10.0.0.9", "198.51.100.1"),
        (1, "", "10.0.0.2"),
        (1, "not-an-address", None),
    ],
)
def test_behind_a_load_balancer_the_audit_records_the_client(
    organization, owner, settings, hops, forwarded, recorded
):
    settings.TRUSTED_PROXY_HOPS = hops
    client_for(owner).post(
        reverse("organization-settings", args=[organization.slug]),
        {"name": "Moved", "country": "DE", "billing_email": organization.billing_email},
        REMOTE_ADDR="10.0.0.2",
        HTTP_X_FORWARDED_FOR=forwarded,
    )
    assert AuditEvent.objects.get(action="organization.updated").ip_address == recorded


def test_users_are_deactivated_in_the_back_office_never_deleted(rf, db):
    from django.contrib import admin

    from accounts.models import User
    from tests.factories import UserFactory

    request = rf.get("/admin/")
    request.user = UserFactory(is_staff=True, is_superuser=True)
    model_admin = admin.site._registry[User]
    assert model_admin.has_delete_permission(request) is False
    assert "delete_selected" not in model_admin.get_actions(request)
