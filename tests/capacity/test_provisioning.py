from datetime import timedelta

from django.core import mail
from django.urls import reverse

from capacity import drivers, lifecycle, provisioning, tasks
from capacity.drivers.simulated import SimulatedDriver
from capacity.models import Allocation, Incident, Node, Reservation, SimulatedCall, SimulatedNode
from core import crypto
from tests.conftest import client_for

from .conftest import NEXT_HOUR, NOW, hours
from .test_reservations import reserve

S = Reservation.State


def scheduled(organization, owner, catalog, **kwargs) -> Reservation:
    reservation = reserve(organization, owner, catalog, **kwargs)
    return lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)


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
    assert provisioning.reservation_start_due() == 0  # more than 10 minutes ahead
    frozen_clock.move_to(NEXT_HOUR - timedelta(minutes=10))
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.reservation_start_due() == 1
    assert provisioning.reservation_start_due() == 0  # run twice: nothing more
    assert state(reservation) == S.ACTIVE
    nodes = sorted(
        Allocation.objects.filter(reservation=reservation).values_list("node__hostname", flat=True)
    )
    assert [n["hostname"] for n in reservation.access_details["nodes"]] == nodes
    assert (
        reservation.access_details["nodes"][0]["ssh_host"] == f"{nodes[0]}.ssh.hyperblock.example"
    )
    kubeconfig = crypto.decrypt(reservation.access_secret)
    host = f"{reservation.public_id.replace('_', '-')}.east-a.k8s.hyperblock.example"
    assert f"server: https://{host}:6443" in kubeconfig
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
        provisioning.reservation_start(reservation)
    assert state(reservation) == S.ACTIVE
    call = SimulatedCall.objects.get(key=f"provision:{reservation.public_id}")
    assert (call.attempts, call.completions) == (3, 1)


class Broker:
    """Stands in for the broker's countdown: a task's retry is kept, and `deliver` runs the
    kept ones in order, moving the frozen clock by each countdown first."""

    def __init__(self, task, monkeypatch, clock=None):
        self.task, self.clock = task, clock
        self.queued: list[tuple[dict, int]] = []
        self.countdowns: list[int] = []
        send = task.apply_async

        def apply_async(args=None, kwargs=None, **options):
            if "countdown" not in options:  # the first send, after commit: run it
                return send(args, kwargs, **options)
            self.queued.append((kwargs, options["countdown"]))
            self.countdowns.append(options["countdown"])
            return None

        monkeypatch.setattr(task, "apply_async", apply_async)

    def deliver(self, capture) -> list:
        results = []
        while self.queued:
            kwargs, countdown = self.queued.pop(0)
            if self.clock is not None:
                self.clock.shift(timedelta(seconds=countdown))
            with capture(execute=True):
                results.append(self.task(**kwargs))
        return results


def test_giving_up_fails_refunds_and_tells_everyone(
    catalog,
    organization,
    owner,
    settings,
    frozen_clock,
    monkeypatch,
    django_capture_on_commit_callbacks,
):
    settings.PROVISIONING_SIMULATED_FAILURE_RATE = 1.0
    reservation = scheduled(organization, owner, catalog)  # starts 10:00
    frozen_clock.move_to(NEXT_HOUR - timedelta(minutes=10))
    broker = Broker(tasks.provision, monkeypatch, frozen_clock)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    # A controller down for five minutes (or more) does not fail the block: retries go on,
    # the backoff capped at 3 minutes, until 30 minutes after its start.
    results = broker.deliver(django_capture_on_commit_callbacks)
    assert broker.countdowns == [5, 10, 20, 40, 80, 160] + [180] * 12
    assert sum(broker.countdowns) == 2475  # 09:50 + 41:15 = 10:31:15, past 10:30
    assert results == ["retrying"] * 17 + ["failed"]
    assert state(reservation) == S.FAILED
    assert Allocation.objects.filter(reservation=reservation, released_at__isnull=True).count() == 0
    assert list(Incident.objects.order_by("id").values_list("kind", "detail")) == [
        (
            "provisioning_delayed",
            f"{reservation.public_id}: provisioning is being retried: Simulated timeout talking "
            f"to the fabric manager (provision:{reservation.public_id}).",
        ),
        (
            "provisioning_failed",
            f"Simulated timeout talking to the fabric manager (provision:"
            f"{reservation.public_id}). (gave up after retries)",
        ),
        # The same backend refuses the teardown too: retried 10 times, then operations hear.
        (
            "teardown_failed",
            f"{reservation.public_id}: the backend did not let the block go: Simulated timeout "
            f"talking to the fabric manager (deprovision:{reservation.public_id}). "
            "(gave up after retries)",
        ),
    ]
    assert SimulatedCall.objects.get(key=f"provision:{reservation.public_id}").attempts == 19
    assert [m.subject for m in mail.outbox] == [f"We could not bring up {reservation.public_id}"]


def test_a_retry_cap_still_gives_up_earlier_when_set(
    catalog, organization, owner, settings, django_capture_on_commit_callbacks
):
    settings.PROVISIONING_SIMULATED_FAILURE_RATE = 1.0
    settings.PROVISIONING_MAX_RETRIES = 2
    reservation = scheduled(organization, owner, catalog)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    assert state(reservation) == S.FAILED
    assert SimulatedCall.objects.get(key=f"provision:{reservation.public_id}").attempts == 3


def test_a_configuration_error_is_retried_and_tells_operations_once(
    catalog, organization, owner, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.PROVISIONING_DRIVER = "tests.capacity.test_provisioning.MisconfiguredDriver"
    reservation = scheduled(organization, owner, catalog)
    broker = Broker(tasks.provision, monkeypatch)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    assert broker.countdowns == [5]
    kwargs, _ = broker.queued.pop()
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.provision(**kwargs) == "retrying"
    assert state(reservation) == S.PROVISIONING
    assert list(Incident.objects.values_list("kind", "detail")) == [
        (
            "provisioning_delayed",
            f"{reservation.public_id}: provisioning is being retried: Access denied",
        )
    ]


class MisconfiguredDriver(SimulatedDriver):
    def provision(self, **kwargs):
        raise drivers.ConfigurationDriverError("Access denied")


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
        provisioning.reservation_start(reservation)
    assert state(reservation) == S.FAILED
    assert SimulatedCall.objects.get(key=f"provision:{reservation.public_id}").attempts == 1
    assert "do not answer their BMC" in Incident.objects.get().detail


def test_a_block_canceled_while_provisioning_is_torn_down(
    catalog, organization, owner, monkeypatch, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    lifecycle.reservation_transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    real = SimulatedDriver.provision

    def cancel_meanwhile(self, **kwargs):
        access = real(self, **kwargs)
        lifecycle.reservation_transition(
            reservation=reservation, to=S.CANCELED, actor=None, reason="Ops canceled"
        )
        return access

    monkeypatch.setattr(SimulatedDriver, "provision", cancel_meanwhile)
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.block_provision(reservation.pk) == S.CANCELED
    assert state(reservation) == S.CANCELED
    assert SimulatedCall.objects.get(key=f"deprovision:{reservation.public_id}").completions == 1


class DownForTeardowns(SimulatedDriver):
    """The backend unreachable for the first two teardown attempts."""

    def deprovision(self, *, key, nodes):
        call = self._attempt(f"down:{key}", nodes)
        if call.attempts <= 2:
            raise drivers.TransientDriverError("controller unreachable")
        return super().deprovision(key=key, nodes=nodes)


def test_a_teardown_the_backend_cannot_take_now_is_retried_until_it_can(
    catalog, organization, owner, settings, monkeypatch, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    lifecycle.reservation_transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    settings.PROVISIONING_DRIVER = "tests.capacity.test_provisioning.DownForTeardowns"
    broker = Broker(tasks.deprovision, monkeypatch)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.reservation_transition(
            reservation=reservation,
            to=S.CANCELED,
            actor=None,
            after_commit=lambda: provisioning._deprovision(reservation),
        )
    assert broker.countdowns == [5]
    assert broker.deliver(django_capture_on_commit_callbacks) == ["retrying", "torn down"]
    assert broker.countdowns == [5, 10]
    key = f"deprovision:{reservation.public_id}"
    assert SimulatedCall.objects.get(key=f"down:{key}").attempts == 3
    assert SimulatedCall.objects.get(key=key).completions == 1


class RefusesTeardowns(SimulatedDriver):
    def deprovision(self, *, key, nodes):
        raise drivers.PermanentDriverError("Slurm (scontrol): Reservation is in use")


def test_a_release_the_backend_refuses_tells_operations_once(
    catalog, organization, owner, settings, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    lifecycle.reservation_transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    lifecycle.reservation_transition(reservation=reservation, to=S.ACTIVE, actor=None)
    lifecycle.reservation_transition(reservation=reservation, to=S.RELEASING, actor=None)
    settings.PROVISIONING_DRIVER = "tests.capacity.test_provisioning.RefusesTeardowns"
    # The task, then reconcile's re-sends of it: one incident, the block still releasing.
    assert tasks.release(reservation_id=reservation.pk) == "failed"
    assert tasks.release(reservation_id=reservation.pk) == "failed"
    assert state(reservation) == S.RELEASING
    [incident] = Incident.objects.all()
    assert (incident.kind, incident.reservation_id, incident.detail) == (
        "teardown_failed",
        reservation.pk,
        f"{reservation.public_id}: the backend did not let the block go: "
        "Slurm (scontrol): Reservation is in use",
    )


def test_a_provision_message_for_a_block_canceled_meanwhile_tears_it_down(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    lifecycle.reservation_transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    # An earlier attempt made it in the backend; then the block was canceled.
    SimulatedDriver().provision(
        key=f"provision:{reservation.public_id}",
        account=organization.slug,
        nodes=provisioning._nodes(reservation),
        starts_at=reservation.starts_at,
        ends_at=reservation.ends_at,
    )
    lifecycle.reservation_transition(reservation=reservation, to=S.CANCELED, actor=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.provision(reservation_id=reservation.pk) == S.CANCELED
    assert SimulatedCall.objects.get(key=f"deprovision:{reservation.public_id}").completions == 1
    assert set(SimulatedNode.objects.values_list("block", flat=True)) == {""}


def test_the_end_releases_the_nodes_and_completes(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog, length=2)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    frozen_clock.move_to(NEXT_HOUR + hours(2))
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.reservation_end_due() == 1
    assert provisioning.reservation_end_due() == 0
    assert state(reservation) == S.COMPLETED
    assert Allocation.objects.filter(reservation=reservation, released_at__isnull=True).count() == 0
    assert set(SimulatedNode.objects.values_list("block", flat=True)) == {""}
    assert SimulatedCall.objects.get(key=f"deprovision:{reservation.public_id}").completions == 1


def test_an_unhealthy_node_goes_to_maintenance_and_is_swapped(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog, nodes=2)  # east-a has 4 nodes
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    sick = (
        Allocation.objects.filter(reservation=reservation).order_by("node__hostname").first().node
    )
    SimulatedNode.objects.update_or_create(
        hostname=sick.hostname, defaults={"fault": "GPU 3 fell off the bus"}
    )
    result = provisioning.provisioning_reconcile()
    assert result == {"retried": 0, "unhealthy": 1, "healed": 1, "leftovers": 0}
    sick.refresh_from_db()
    assert (sick.status, sick.status_reason) == (Node.Status.MAINTENANCE, "GPU 3 fell off the bus")
    live = Allocation.objects.filter(reservation=reservation, released_at__isnull=True)
    assert live.count() == 2
    assert sick.pk not in set(live.values_list("node_id", flat=True))
    assert sorted(Incident.objects.values_list("kind", flat=True)) == [
        "node_swapped",
        "node_unhealthy",
    ]
    assert provisioning.provisioning_reconcile() == {
        "retried": 0,
        "unhealthy": 0,
        "healed": 0,
        "leftovers": 0,
    }  # twice


def test_held_and_provisioning_blocks_leave_an_unhealthy_node_too(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    """A block being paid for, and one coming up, are moved like running ones: nothing looks
    at a node in maintenance again, so a block left on it would start on a dead node."""
    held = reserve(organization, owner, catalog, nodes=1)
    coming_up = scheduled(organization, owner, catalog, nodes=1)
    lifecycle.reservation_transition(reservation=coming_up, to=S.PROVISIONING, actor=None)
    sick = {r.pk: Allocation.objects.get(reservation=r).node for r in (held, coming_up)}
    for node in sick.values():
        SimulatedNode.objects.update_or_create(hostname=node.hostname, defaults={"fault": "PSU"})
    with django_capture_on_commit_callbacks(execute=True):
        result = provisioning.provisioning_reconcile()
    assert (result["unhealthy"], result["healed"]) == (2, 2)
    for reservation in (held, coming_up):
        [live] = Allocation.objects.filter(reservation=reservation, released_at__isnull=True)
        assert live.node.status == Node.Status.AVAILABLE
        assert live.node != sick[reservation.pk]
        assert live.node.cluster_id == sick[reservation.pk].cluster_id
    assert state(held) == S.HELD
    assert Incident.objects.filter(kind="node_swapped").count() == 2
    # Its provisioning then brings the block up on the new node.
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.block_provision(coming_up.pk) == S.ACTIVE
    coming_up.refresh_from_db()
    [live] = Allocation.objects.filter(reservation=coming_up, released_at__isnull=True)
    assert [n["hostname"] for n in coming_up.access_details["nodes"]] == [live.node.hostname]


def test_a_stuck_provisioning_is_retried_by_reconcile(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    # Its task was lost: nothing provisions it until the sweep notices.
    lifecycle.reservation_transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    frozen_clock.shift(timedelta(minutes=16))
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.provisioning_reconcile()["retried"] == 1
    assert state(reservation) == S.ACTIVE
    assert provisioning.provisioning_reconcile()["retried"] == 0


def test_kubeconfig_download_is_for_members_only(
    catalog, organization, owner, other_organization, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
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
    lifecycle.reservation_transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    assert 'hx-trigger="every 3s"' in client_for(owner).get(url).content.decode()
    # A page drawn while scheduled is redrawn once the state has moved on.
    moved = client_for(owner).get(url, {"shown": "scheduled"}, HTTP_HX_REQUEST="true")
    assert moved["HX-Refresh"] == "true"
    same = client_for(owner).get(url, {"shown": "provisioning"}, HTTP_HX_REQUEST="true")
    assert "HX-Refresh" not in same
