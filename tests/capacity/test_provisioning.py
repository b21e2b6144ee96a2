from datetime import timedelta

from django.core import mail
from django.urls import reverse

from capacity import drivers, lifecycle, provisioning
from capacity.drivers.simulated import SimulatedDriver
from capacity.models import Allocation, Incident, Node, Reservation, SimulatedCall, SimulatedNode
from portal import crypto
from tests.conftest import client_for

from .conftest import NEXT_HOUR, NOW, hours
from .test_reservations import reserve

S = Reservation.State


def scheduled(organization, owner, catalog, **kwargs) -> Reservation:
    reservation = reserve(organization, owner, catalog, **kwargs)
    return lifecycle.transition(reservation=reservation, to=S.SCHEDULED, actor=None)


def state(reservation) -> str:
    reservation.refresh_from_db()
    return reservation.state


class FlakyDriver(SimulatedDriver):
    """The simulated data center, failing the first two provisioning attempts."""

    failures = 2

    def provision(self, **kwargs):
        call = SimulatedCall.objects.filter(key=kwargs["key"]).first()
        if call is None or call.attempts < self.failures:
            self._attempt(kwargs["key"], kwargs["nodes"])
            raise drivers.TransientDriverError("simulated fabric timeout")
        return super().provision(**kwargs)


def test_a_block_is_provisioned_shortly_before_its_start_and_only_once(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)  # starts 10:00; it is 09:30
    assert provisioning.start_due() == 0  # more than 10 minutes ahead
    frozen_clock.move_to(NEXT_HOUR - timedelta(minutes=10))
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.start_due() == 1
    assert provisioning.start_due() == 0  # run twice: nothing more
    assert state(reservation) == S.ACTIVE
    nodes = sorted(
        Allocation.objects.filter(reservation=reservation).values_list("node__hostname", flat=True)
    )
    assert [n["hostname"] for n in reservation.access_details["nodes"]] == nodes
    assert (
        reservation.access_details["nodes"][0]["ssh_host"] == f"{nodes[0]}.ssh.hyperblock.example"
    )
    kubeconfig = crypto.decrypt(reservation.access_secret)
    assert f"server: https://{reservation.public_id}.k8s.hyperblock.example:6443" in kubeconfig
    assert "token:" not in reservation.access_secret  # stored encrypted
    assert SimulatedCall.objects.get(key=f"provision:{reservation.public_id}").completions == 1
    transitions = [
        (e.data["from"], e.data["to"])
        for e in reservation.allocations.first()
        .reservation.organization.audit_events.filter(action="reservation.transition")
        .order_by("id")
    ]
    assert transitions == [
        ("held", "scheduled"),
        ("scheduled", "provisioning"),
        ("provisioning", "active"),
    ]


def test_transient_failures_are_retried_with_backoff_then_succeed(
    catalog, organization, owner, settings, django_capture_on_commit_callbacks
):
    settings.PROVISIONING_DRIVER = "tests.capacity.test_provisioning.FlakyDriver"
    reservation = scheduled(organization, owner, catalog, start=NOW.replace(minute=0) + hours(1))
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.start(reservation)
    assert state(reservation) == S.ACTIVE
    call = SimulatedCall.objects.get(key=f"provision:{reservation.public_id}")
    assert (call.attempts, call.completions) == (3, 1)


def test_giving_up_fails_refunds_and_tells_everyone(
    catalog, organization, owner, settings, django_capture_on_commit_callbacks
):
    settings.PROVISIONING_SIMULATED_FAILURE_RATE = 1.0
    settings.PROVISIONING_MAX_RETRIES = 2
    reservation = scheduled(organization, owner, catalog)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.start(reservation)
    assert state(reservation) == S.FAILED
    assert Allocation.objects.filter(reservation=reservation, released_at__isnull=True).count() == 0
    incident = Incident.objects.get()
    assert (incident.kind, incident.reservation) == ("provisioning_failed", reservation)
    assert "gave up after retries" in incident.detail
    assert SimulatedCall.objects.get(key=f"provision:{reservation.public_id}").attempts == 3
    assert [m.subject for m in mail.outbox] == [f"We could not bring up {reservation.public_id}"]


def test_a_permanent_driver_error_fails_at_once(
    catalog, organization, owner, settings, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    settings.PROVISIONING_SIMULATED_BROKEN_NODES = list(
        Allocation.objects.filter(reservation=reservation).values_list("node__hostname", flat=True)[
            :1
        ]
    )
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.start(reservation)
    assert state(reservation) == S.FAILED
    assert SimulatedCall.objects.get(key=f"provision:{reservation.public_id}").attempts == 1
    assert "do not answer their BMC" in Incident.objects.get().detail


def test_a_block_canceled_while_provisioning_is_torn_down(
    catalog, organization, owner, monkeypatch, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    lifecycle.transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    real = SimulatedDriver.provision

    def cancel_meanwhile(self, **kwargs):
        access = real(self, **kwargs)
        lifecycle.transition(
            reservation=reservation, to=S.CANCELED, actor=None, reason="Ops canceled"
        )
        return access

    monkeypatch.setattr(SimulatedDriver, "provision", cancel_meanwhile)
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.provision(reservation.pk) == S.CANCELED
    assert state(reservation) == S.CANCELED
    assert SimulatedCall.objects.get(key=f"deprovision:{reservation.public_id}").completions == 1


def test_the_end_releases_the_nodes_and_completes(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog, length=2)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.start(reservation)
    frozen_clock.move_to(NEXT_HOUR + hours(2))
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.end_due() == 1
    assert provisioning.end_due() == 0
    assert state(reservation) == S.COMPLETED
    assert Allocation.objects.filter(reservation=reservation, released_at__isnull=True).count() == 0
    assert set(SimulatedNode.objects.values_list("block", flat=True)) == {""}
    assert SimulatedCall.objects.get(key=f"deprovision:{reservation.public_id}").completions == 1


def test_reminders_go_out_once_each(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog, length=30)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.start(reservation)
    mail.outbox.clear()
    frozen_clock.move_to(NEXT_HOUR + hours(6) + timedelta(minutes=1))  # 23:59 before the end
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.remind() == 1
        assert provisioning.remind() == 0
    frozen_clock.move_to(NEXT_HOUR + hours(29) + timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.remind() == 1
        assert provisioning.remind() == 0
    assert [m.subject for m in mail.outbox] == [
        f"{reservation.public_id} ends in 24h",
        f"{reservation.public_id} ends in 1h",
    ]


def test_an_unhealthy_node_goes_to_maintenance_and_is_swapped(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog, nodes=2)  # east-a has 4 nodes
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.start(reservation)
    sick = (
        Allocation.objects.filter(reservation=reservation).order_by("node__hostname").first().node
    )
    SimulatedNode.objects.update_or_create(
        hostname=sick.hostname, defaults={"fault": "GPU 3 fell off the bus"}
    )
    result = provisioning.reconcile()
    assert result == {"retried": 0, "unhealthy": 1, "healed": 1}
    sick.refresh_from_db()
    assert (sick.status, sick.status_reason) == (Node.Status.MAINTENANCE, "GPU 3 fell off the bus")
    live = Allocation.objects.filter(reservation=reservation, released_at__isnull=True)
    assert live.count() == 2
    assert sick.pk not in set(live.values_list("node_id", flat=True))
    assert sorted(Incident.objects.values_list("kind", flat=True)) == [
        "node_swapped",
        "node_unhealthy",
    ]
    assert provisioning.reconcile() == {"retried": 0, "unhealthy": 0, "healed": 0}  # twice


def test_a_stuck_provisioning_is_retried_by_reconcile(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    # Its task was lost: nothing provisions it until the sweep notices.
    lifecycle.transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    frozen_clock.shift(timedelta(minutes=16))
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.reconcile()["retried"] == 1
    assert state(reservation) == S.ACTIVE
    assert provisioning.reconcile()["retried"] == 0


def test_kubeconfig_download_is_for_members_only(
    catalog, organization, owner, other_organization, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.start(reservation)
    url = reverse("reservation-kubeconfig", args=[organization.slug, reservation.public_id])
    response = client_for(owner).get(url)
    assert (
        response["Content-Disposition"]
        == f'attachment; filename="{reservation.public_id}.kubeconfig"'
    )
    assert response.content.decode() == crypto.decrypt(
        Reservation.objects.get(pk=reservation.pk).access_secret
    )
    stranger = client_for(other_organization.memberships.get().user)
    assert stranger.get(url).status_code == 404
    page = client_for(owner).get(
        reverse("reservation-detail", args=[organization.slug, reservation.public_id])
    )
    assert page.content.decode().count("data-copy=") == 2


def test_live_panel_polls_only_while_a_transition_runs(catalog, organization, owner):
    reservation = scheduled(organization, owner, catalog)
    url = reverse("reservation-status", args=[organization.slug, reservation.public_id])
    assert 'hx-trigger="every 3s"' not in client_for(owner).get(url).content.decode()
    lifecycle.transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    assert 'hx-trigger="every 3s"' in client_for(owner).get(url).content.decode()
    # A page drawn while scheduled is redrawn once the state has moved on.
    moved = client_for(owner).get(url, {"shown": "scheduled"}, HTTP_HX_REQUEST="true")
    assert moved["HX-Refresh"] == "true"
    same = client_for(owner).get(url, {"shown": "provisioning"}, HTTP_HX_REQUEST="true")
    assert "HX-Refresh" not in same
