"""Reaching the nodes (SSH endpoints, the kubeconfig) is its own permission: owners, admins
and members have it; Billing sees the reservation, to pay for it, but not the way in."""

import pytest
from django.urls import reverse

from accounts.permissions import Role
from capacity import provisioning
from core.models import AuditEvent
from tests.conftest import client_for, member_of

from .test_provisioning import scheduled

RUN_WORK = {Role.OWNER, Role.ADMIN, Role.MEMBER}


@pytest.fixture
def active(catalog, organization, owner, django_capture_on_commit_callbacks):
    reservation = scheduled(organization, owner, catalog)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    reservation.refresh_from_db()
    assert reservation.access_secret
    return reservation


def _user(organization, owner, role):
    return owner if role == Role.OWNER else member_of(organization, role)


@pytest.mark.parametrize("role", list(Role.values))
def test_only_roles_that_run_work_download_the_kubeconfig(organization, owner, active, role):
    client = client_for(_user(organization, owner, role))
    url = reverse("reservation-kubeconfig", args=[organization.slug, active.public_id])
    downloads = AuditEvent.objects.filter(action="reservation.kubeconfig_downloaded")
    response = client.get(url)
    if role in RUN_WORK:
        assert response.status_code == 200
        assert response["Content-Type"] == "application/yaml"
        assert downloads.count() == 1
    else:
        assert response.status_code == 403
        page = response.content.decode()
        assert "Your role (billing) cannot reach the nodes: SSH access and kubeconfigs." in page
        assert "apiVersion" not in page
        assert downloads.count() == 0


@pytest.mark.parametrize("role", list(Role.values))
@pytest.mark.parametrize("name", ["reservation-detail", "reservation-status"])
def test_only_roles_that_run_work_see_ssh_access(organization, owner, active, role, name):
    client = client_for(_user(organization, owner, role))
    page = client.get(reverse(name, args=[organization.slug, active.public_id]))
    assert page.status_code == 200
    content = page.content.decode()
    hosts = [node["ssh_host"] for node in active.access_details["nodes"]]
    shown = [host for host in hosts if host in content]
    if role in RUN_WORK:
        assert shown == hosts
        assert 'data-testid="kubeconfig"' in content
        assert content.count("data-copy=") == len(hosts)
    else:
        assert shown == []
        assert 'data-testid="kubeconfig"' not in content
        assert "data-copy=" not in content
        assert "SSH access and the kubeconfig are for owners, admins and members." in content
