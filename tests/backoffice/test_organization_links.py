"""The organization page links to its reservations, quotes, rates, money and audit log; every
link opens a list holding only that organization's rows."""

import re

import pytest

from core import audit
from tests.factories import OrganizationFactory

from .conftest import make_staff, verified_client

pytestmark = pytest.mark.django_db


def test_every_link_on_the_organization_page_lists_only_its_rows():
    acme, other = OrganizationFactory(name="Acme"), OrganizationFactory(name="Other")
    for org in (acme, other):
        audit.record(action="organization.updated", actor=None, organization=org, target=org)
    client = verified_client(make_staff(superuser=True))
    page = client.get(f"/admin/accounts/organization/{acme.pk}/change/").content.decode()
    links = re.findall(r'href="(/admin/[a-z]+/[a-z]+/\?[^"]+)"', page)
    labels = {link.split("/")[3] for link in links}
    assert labels == {
        "reservation",
        "negotiatedrate",
        "payment",
        "invoice",
        "ledgerentry",
        "auditevent",
    }
    for link in links:
        response = client.get(link.replace("&amp;", "&"))
        assert response.status_code == 200, link
        assert "e=1" not in response.get("Location", ""), link
        rows = response.context["cl"].result_list
        assert all(row.organization_id == acme.pk for row in rows), link
    audit_link = next(link for link in links if "/auditevent/" in link)
    rows = client.get(audit_link).context["cl"].result_list
    assert [row.organization_id for row in rows] == [acme.pk]
