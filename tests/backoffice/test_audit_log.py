"""Staff read the audit log, filtered by organization, actor or object; nobody edits it."""

import pytest
from django.test import Client

from backoffice.audit_log import audit_log_url
from core import audit, context
from core.models import AuditEvent
from tests.factories import OrganizationFactory, UserFactory

from .conftest import GROUPS, make_staff, verified_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def events():
    acme, other = OrganizationFactory(name="Acme"), OrganizationFactory(name="Other")
    customer = UserFactory(email="dana@acme.example")
    staff = make_staff("Sales", email="sam@hyperblock.example")
    token = context.client_ip.set("203.0.113.9")
    try:
        by_customer = audit.record(
            action="organization.updated", actor=customer, organization=acme, target=acme
        )
        by_staff = audit.record(
            action="organization.suspended",
            actor=staff,
            organization=acme,
            target=acme,
            reason="Unpaid invoices since October.",
        )
        by_system = audit.record(action="organization.updated", actor=None, organization=other)
    finally:
        context.client_ip.reset(token)
    return {"customer": by_customer, "staff": by_staff, "system": by_system, "acme": acme}


def listed(client: Client, url: str) -> list[int]:
    response = client.get(url)
    assert response.status_code == 200
    return sorted(e.pk for e in response.context["cl"].result_list)


@pytest.mark.parametrize("group", GROUPS)
def test_every_staff_group_reads_the_log_and_filters_it(events, group):
    client = verified_client(make_staff(group))
    every = sorted(e.pk for e in (events["customer"], events["staff"], events["system"]))
    assert listed(client, audit_log_url()) == every
    acme = events["acme"]
    assert listed(client, audit_log_url(organization=acme.pk)) == sorted(
        [events["customer"].pk, events["staff"].pk]
    )
    staff_event = events["staff"]
    assert listed(client, audit_log_url(actor=staff_event.actor_id)) == [staff_event.pk]
    assert listed(client, audit_log_url(object=f"accounts.organization:{acme.pk}")) == sorted(
        [events["customer"].pk, events["staff"].pk]
    )
    assert listed(client, audit_log_url(actor_kind="system")) == [events["system"].pk]
    assert listed(client, audit_log_url(q="sam@")) == [staff_event.pk]
    page = client.get(audit_log_url(organization=acme.pk)).content.decode()
    assert "Unpaid invoices since October." in page
    assert "203.0.113.9" in page


def test_the_record_says_who_from_where_and_why(events):
    staff_event = events["staff"]
    assert (
        staff_event.actor_kind,
        staff_event.actor_email,
        staff_event.ip_address,
        staff_event.reason,
    ) == ("staff", "sam@hyperblock.example", "203.0.113.9", "Unpaid invoices since October.")
    assert (events["customer"].actor_kind, events["system"].actor_kind) == ("customer", "system")
    assert events["system"].ip_address is None


@pytest.mark.parametrize("superuser", [False, True])
def test_nobody_edits_or_deletes_an_audit_event(events, superuser):
    client = verified_client(make_staff("Sales", superuser=superuser))
    event = events["staff"]
    change = f"/admin/core/auditevent/{event.pk}/change/"
    page = client.get(change)
    assert page.status_code == 200  # shown read-only
    assert b'name="_save"' not in page.content
    assert client.post(change, {"action": "edited", "reason": "x"}).status_code == 403
    assert (
        client.post(f"/admin/core/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert client.get("/admin/core/auditevent/add/").status_code == 403
    bulk = client.post(
        "/admin/core/auditevent/",
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    event.refresh_from_db()
    assert (AuditEvent.objects.count(), event.action, event.reason) == (
        3,
        "organization.suspended",
        "Unpaid invoices since October.",
    )


def test_customers_cannot_read_the_log(events):
    client = Client()
    client.force_login(UserFactory())
    assert client.get(audit_log_url()).status_code == 302
