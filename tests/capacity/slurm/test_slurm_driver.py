"""The Slurm driver against a real controller with fake GPU nodes (conftest.py): every outcome
is read back from Slurm's own view (`scontrol -o show res NAME`)."""

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.permissions import Role
from capacity import extensions, operations, provisioning, tasks
from capacity.drivers import get_driver
from capacity.drivers.slurm.commands import Runner
from capacity.drivers.slurm.parsing import format_time, parse_key_values
from capacity.models import Incident, Node, Reservation
from tests.factories import MembershipFactory, UserFactory

from .cluster import _wait
from .conftest import block, start, state

S = Reservation.State
pytestmark = pytest.mark.django_db


def test_provision_extend_and_end_a_block(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu001", "gpu002"])
    owner = MembershipFactory(organization=slurm_org, role=Role.OWNER).user
    reservation = block(slurm_org, cluster, ["gpu001", "gpu002"])
    name = reservation.public_id

    start(reservation, django_capture_on_commit_callbacks)
    assert state(reservation) == S.ACTIVE
    view = slurm.reservation(name)
    assert (view["Nodes"], view["Accounts"], view["State"]) == (
        "gpu[001-002]",
        "acme-labs",
        "ACTIVE",
    )
    assert view["EndTime"] == format_time(reservation.ends_at)
    access = reservation.access_details
    assert [(n["hostname"], n["ssh_host"], n["ssh_user"]) for n in access["nodes"]] == [
        ("gpu001", "login.test.example", "acme-labs"),
        ("gpu002", "login.test.example", "acme-labs"),
    ]
    assert f"sbatch --reservation={name} --account=acme-labs --nodes=2" in access["instructions"]
    assert reservation.access_secret == ""

    with django_capture_on_commit_callbacks(execute=True):
        extensions.extension_apply(
            extension=extensions.extension_hold(reservation=reservation, actor=owner, hours=3),
            reason="Paid.",
        )
    reservation.refresh_from_db()
    assert slurm.reservation(name)["EndTime"] == format_time(reservation.ends_at)
    assert slurm.reservation(name)["Nodes"] == "gpu[001-002]"

    # The customer's work still runs when the block ends: the release stops it.
    job = slurm.run(
        "sbatch",
        f"--reservation={name}",
        "--account=acme-labs",
        "--output=/dev/null",
        "--wrap=sleep 300",
    ).stdout.split()[-1]
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.reservation_end_due(now=reservation.ends_at) == 1
    assert state(reservation) == S.COMPLETED
    assert slurm.reservation(name) is None
    job_view = parse_key_values(slurm.scontrol("-o", "show", "job", job).stdout)
    assert job_view["JobState"] == "CANCELLED"


def test_canceling_a_block_being_provisioned_deletes_its_slurm_reservation(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu003"])
    reservation = block(slurm_org, cluster, ["gpu003"], state=S.PROVISIONING)
    # The worker made the Slurm reservation, then was lost before it recorded anything.
    get_driver().provision(
        key=f"provision:{reservation.public_id}",
        account=slurm_org.slug,
        nodes=["gpu003"],
        starts_at=reservation.starts_at,
        ends_at=reservation.ends_at,
    )
    assert slurm.reservation(reservation.public_id)["Nodes"] == "gpu003"
    staff = UserFactory(is_staff=True, is_superuser=True)
    with django_capture_on_commit_callbacks(execute=True):
        operations.reservation_cancel(
            reservation=reservation, actor=staff, reason="Customer asked", refund="full"
        )
    assert state(reservation) == S.CANCELED
    assert slurm.reservation(reservation.public_id) is None


def test_an_active_block_whose_slurm_reservation_vanished_gets_it_back_on_extension(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu010"])
    owner = MembershipFactory(organization=slurm_org, role=Role.OWNER).user
    reservation = block(slurm_org, cluster, ["gpu010"])
    start(reservation, django_capture_on_commit_callbacks)
    slurm.scontrol("delete", f"ReservationName={reservation.public_id}")  # behind our back
    with django_capture_on_commit_callbacks(execute=True):
        extensions.extension_apply(
            extension=extensions.extension_hold(reservation=reservation, actor=owner, hours=1),
            reason="Paid.",
        )
    reservation.refresh_from_db()
    view = slurm.reservation(reservation.public_id)
    assert (view["Nodes"], view["Accounts"], view["EndTime"]) == (
        "gpu010",
        "acme-labs",
        format_time(reservation.ends_at),
    )
    assert Incident.objects.count() == 0
    assert state(reservation) == S.ACTIVE


def test_a_block_right_after_one_still_running_jobs_is_provisioned(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu008"])
    first = block(slurm_org, cluster, ["gpu008"], hours=1)
    start(first, django_capture_on_commit_callbacks)
    job = slurm.run(
        "sbatch",
        f"--reservation={first.public_id}",
        "--account=acme-labs",
        "--output=/dev/null",
        "--wrap=sleep 300",
    ).stdout.split()[-1]

    def running() -> bool:
        shown = slurm.scontrol("-o", "show", "job", job).stdout
        return parse_key_values(shown)["JobState"] == "RUNNING"

    _wait("the first block's job running", running, timeout=30, interval=0.2)
    # The next customer's block starts when the first ends; it is provisioned meanwhile.
    second = block(slurm_org, cluster, ["gpu008"], starts_at=first.ends_at, hours=1)
    start(second, django_capture_on_commit_callbacks)
    assert state(second) == S.ACTIVE
    view = slurm.reservation(second.public_id)
    assert (view["Nodes"], view["StartTime"]) == ("gpu008", format_time(second.starts_at))
    assert "IGNORE_JOBS" in view["Flags"]


def test_a_block_starting_within_the_minute_after_another_keeps_its_own_start(slurm, slurm_org):
    # The block before ours on gpu009 ends in 20 seconds; ours starts right then. Sent as
    # "now", ours would overlap the one still running, and Slurm would refuse it.
    ends = timezone.now().replace(microsecond=0) + timedelta(seconds=20)
    slurm.scontrol(
        "create",
        "reservation",
        "ReservationName=rsv_before",
        "Nodes=gpu009",
        "StartTime=now",
        f"EndTime={format_time(ends)}",
        "Accounts=acme-labs",
        "Flags=IGNORE_JOBS",
    )
    get_driver().provision(
        key="provision:rsv_after",
        account=slurm_org.slug,
        nodes=["gpu009"],
        starts_at=ends,
        ends_at=ends + timedelta(hours=1),
    )
    view = slurm.reservation("rsv_after")
    assert (view["Nodes"], view["StartTime"], view["EndTime"]) == (
        "gpu009",
        format_time(ends),
        format_time(ends + timedelta(hours=1)),
    )


def test_a_reservation_of_ours_with_other_nodes_and_end_is_updated_to_match(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu002", "gpu003"])
    reservation = block(slurm_org, cluster, ["gpu003"], state=S.PROVISIONING)
    name = reservation.public_id
    # A first attempt made it on gpu002 with another end; the block moved to gpu003 meanwhile.
    slurm.scontrol(
        "create",
        "reservation",
        f"ReservationName={name}",
        "Nodes=gpu002",
        "StartTime=now",
        f"EndTime={format_time(reservation.ends_at + timedelta(hours=1))}",
        "Accounts=acme-labs",
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.provision(reservation_id=reservation.pk) == S.ACTIVE
    view = slurm.reservation(name)
    assert (view["Nodes"], view["EndTime"]) == ("gpu003", format_time(reservation.ends_at))
    assert Incident.objects.count() == 0


def test_reconcile_deletes_the_slurm_reservation_of_a_block_that_finished(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu005"])
    reservation = block(slurm_org, cluster, ["gpu005"], state=S.PROVISIONING)
    get_driver().provision(
        key=f"provision:{reservation.public_id}",
        account=slurm_org.slug,
        nodes=["gpu005"],
        starts_at=reservation.starts_at,
        ends_at=reservation.ends_at,
    )
    # Failed while its teardown could not reach Slurm (a lost message, say): left behind.
    Reservation.objects.filter(pk=reservation.pk).update(state=S.FAILED)
    Node.objects.filter(hostname="gpu005").update(status=Node.Status.MAINTENANCE)
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.provisioning_reconcile() == {
            "retried": 0,
            "unhealthy": 0,
            "healed": 0,
            "leftovers": 1,
        }
    assert slurm.reservation(reservation.public_id) is None
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.provisioning_reconcile()["leftovers"] == 0


def test_a_job_of_another_account_is_refused_on_a_reserved_node(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu004"])
    reservation = block(slurm_org, cluster, ["gpu004"])
    start(reservation, django_capture_on_commit_callbacks)
    name = reservation.public_id

    refused = slurm.run(
        "sbatch", f"--reservation={name}", "--account=other-co", "--wrap=true", check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "sbatch: error: Batch job submission failed: Access denied to requested reservation"
    )
    outside = slurm.run(
        "srun", "--immediate=2", "-w", "gpu004", "--account=other-co", "true", check=False
    )
    assert outside.returncode == 1
    assert "Requested nodes are busy" in outside.stderr

    ran = slurm.run(
        "srun",
        f"--reservation={name}",
        "--account=acme-labs",
        "printenv",
        "SLURMD_NODENAME",
        check=False,
    )
    assert (ran.returncode, ran.stdout.strip()) == (0, "gpu004")


def test_a_job_already_running_on_an_unsold_node_is_canceled_when_the_block_is_made(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu005", "gpu006"])
    # gpu006's previous block is still running its customer's job: that one stays.
    earlier = block(slurm_org, cluster, ["gpu006"], hours=1)
    start(earlier, django_capture_on_commit_callbacks)

    def submit(*args: str) -> str:
        return slurm.run("sbatch", *args, "--output=/dev/null", "--wrap=sleep 300").stdout.split()[
            -1
        ]

    theirs = submit("-w", "gpu005", "--account=other-co")  # on the unsold node
    earlier_job = submit(f"--reservation={earlier.public_id}", "--account=acme-labs")

    def job_state(job: str) -> str:
        return parse_key_values(slurm.scontrol("-o", "show", "job", job).stdout)["JobState"]

    _wait("both jobs running", lambda: {job_state(theirs), job_state(earlier_job)} == {"RUNNING"},
          timeout=30, interval=0.2)  # fmt: skip
    reservation = block(slurm_org, cluster, ["gpu005"], starts_at=earlier.starts_at)
    start(reservation, django_capture_on_commit_callbacks)
    assert state(reservation) == S.ACTIVE
    _wait("the stray job canceled", lambda: job_state(theirs) == "CANCELLED", timeout=15)
    assert job_state(earlier_job) == "RUNNING"
    assert get_driver().cancel_strays(["gpu005", "gpu006"]) == []  # twice: nothing more


def test_an_overlap_refused_by_slurm_fails_refunds_and_tells_operations(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu005"])
    reservation = block(slurm_org, cluster, ["gpu005"])
    # Someone booked the node in Slurm behind our back.
    slurm.scontrol(
        "create",
        "reservation",
        "ReservationName=maint_gpu005",
        "Nodes=gpu005",
        "StartTime=now",
        "Duration=600",
        "Accounts=other-co",
    )
    mail.outbox.clear()
    start(reservation, django_capture_on_commit_callbacks)
    assert state(reservation) == S.FAILED
    incident = Incident.objects.get(reservation=reservation)
    assert (incident.kind, incident.detail) == (
        Incident.Kind.PROVISIONING_FAILED,
        "Slurm (scontrol): Error creating the reservation: "
        "Requested reservation overlaps with another reservation",
    )
    assert [m.subject for m in mail.outbox] == [f"We could not bring up {reservation.public_id}"]
    assert slurm.reservation(reservation.public_id) is None
    assert slurm.reservation("maint_gpu005")["Nodes"] == "gpu005"  # theirs is untouched


def test_the_controller_stopped_mid_provision_is_retried_and_succeeds_once_back(
    slurm, slurm_org, inventory, monkeypatch, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu006"])
    reservation = block(slurm_org, cluster, ["gpu006"])
    real_call = Runner.__call__
    stopped = []

    def controller_dies_before_create(self, command, *args):
        if args[:2] == ("create", "reservation") and not stopped:
            slurm.stop_controller()
            stopped.append(True)
        return real_call(self, command, *args)

    retries = []  # what the broker would deliver after the countdown
    send = tasks.provision.apply_async

    def broker(args=None, kwargs=None, **options):
        if kwargs.get("attempt", 0) == 0:
            return send(args, kwargs, **options)
        retries.append({"kwargs": kwargs, **options})
        return None

    monkeypatch.setattr(Runner, "__call__", controller_dies_before_create)
    monkeypatch.setattr(tasks.provision, "apply_async", broker)
    try:
        start(reservation, django_capture_on_commit_callbacks)
        assert state(reservation) == S.PROVISIONING
        assert retries == [
            {"kwargs": {"reservation_id": reservation.pk, "attempt": 1}, "countdown": 5}
        ]
    finally:
        slurm.start_controller()
    assert slurm.reservation(reservation.public_id) is None

    assert tasks.provision(**retries.pop()["kwargs"]) == S.ACTIVE
    assert state(reservation) == S.ACTIVE
    assert slurm.reservation(reservation.public_id)["Nodes"] == "gpu006"
    assert Incident.objects.count() == 0


def test_every_call_twice_changes_nothing_the_second_time(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu007", "gpu008"])
    reservation = block(slurm_org, cluster, ["gpu007", "gpu008"])
    name = reservation.public_id
    driver = get_driver()
    kwargs = {
        "key": f"provision:{name}",
        "account": slurm_org.slug,
        "nodes": ["gpu007", "gpu008"],
        "starts_at": reservation.starts_at,
        "ends_at": reservation.ends_at,
    }
    first = driver.provision(**kwargs)
    view = slurm.scontrol("-o", "show", "res", name).stdout
    assert driver.provision(**kwargs) == first
    assert slurm.scontrol("-o", "show", "res", name).stdout == view

    later = reservation.ends_at + timedelta(hours=2)
    driver.extend(key=f"extend:{name}", nodes=["gpu007", "gpu008"], ends_at=later)
    view = slurm.scontrol("-o", "show", "res", name).stdout
    driver.extend(key=f"extend:{name}", nodes=["gpu007", "gpu008"], ends_at=later)
    assert slurm.scontrol("-o", "show", "res", name).stdout == view
    assert slurm.reservation(name)["EndTime"] == format_time(later)

    # Provisioning the first window again finds another end: ours, so it is put back.
    driver.provision(**kwargs)
    assert slurm.reservation(name)["EndTime"] == format_time(reservation.ends_at)
    view = slurm.scontrol("-o", "show", "res", name).stdout
    driver.provision(**kwargs)
    assert slurm.scontrol("-o", "show", "res", name).stdout == view

    driver.deprovision(key=f"deprovision:{name}", nodes=["gpu007", "gpu008"])
    assert slurm.reservation(name) is None
    driver.deprovision(key=f"deprovision:{name}", nodes=["gpu007", "gpu008"])  # gone is done
    assert slurm.reservation(name) is None

    # The lifecycle too: starting twice provisions once.
    start(reservation, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        assert provisioning.reservation_start(reservation) is False
        assert tasks.provision(reservation_id=reservation.pk) == S.ACTIVE
    ours = {reservation.public_id}
    assert [n for n in slurm.reservations() if n in ours] == [name]


def test_a_drained_node_goes_to_maintenance_with_slurms_reason_and_its_block_is_flagged(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu009"])
    reservation = block(slurm_org, cluster, ["gpu009"])
    start(reservation, django_capture_on_commit_callbacks)
    slurm.scontrol("update", "NodeName=gpu009", "State=DRAIN", "Reason=fan failure")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert provisioning.provisioning_reconcile() == {
                "retried": 0,
                "unhealthy": 1,
                "healed": 0,
                "leftovers": 0,
            }
        node = Node.objects.get(hostname="gpu009")
        assert node.status == Node.Status.MAINTENANCE
        # Slurm marks a node RESERVED some time after its reservation starts.
        assert re.fullmatch(r"Slurm: IDLE\+DRAIN(\+RESERVED)?: fan failure", node.status_reason)
        flagged = Incident.objects.get(reservation=reservation)
        assert flagged.detail == (
            f"gpu009 failed under {reservation.public_id}; no spare in slurm-test."
        )
        # Twice: the node is in maintenance now, nothing more happens.
        with django_capture_on_commit_callbacks(execute=True):
            assert provisioning.provisioning_reconcile() == {
                "retried": 0,
                "unhealthy": 0,
                "healed": 0,
                "leftovers": 0,
            }
        assert Incident.objects.count() == 2
    finally:
        slurm.scontrol("update", "NodeName=gpu009", "State=RESUME")


def test_a_killed_slurmd_puts_its_node_into_maintenance_and_the_block_moves_to_a_spare(
    slurm, slurm_org, inventory, django_capture_on_commit_callbacks
):
    cluster = inventory(["gpu011", "gpu012"])
    reservation = block(slurm_org, cluster, ["gpu011"])
    start(reservation, django_capture_on_commit_callbacks)
    name = reservation.public_id
    assert slurm.reservation(name)["Nodes"] == "gpu011"
    slurm.kill_slurmd("gpu011")
    try:
        slurm.wait_state("gpu011", "NOT_RESPONDING", timeout=45)
        with django_capture_on_commit_callbacks(execute=True):
            assert provisioning.provisioning_reconcile() == {
                "retried": 0,
                "unhealthy": 1,
                "healed": 1,
                "leftovers": 0,
            }
        node = Node.objects.get(hostname="gpu011")
        assert node.status == Node.Status.MAINTENANCE
        assert node.status_reason.startswith("Slurm: ")
        assert "NOT_RESPONDING" in node.status_reason
        assert provisioning._nodes(reservation) == ["gpu012"]
        assert slurm.reservation(name)["Nodes"] == "gpu012"  # Slurm's reservation moved too
        assert state(reservation) == S.ACTIVE
        assert list(Incident.objects.values_list("kind", "detail")) == [
            (Incident.Kind.NODE_SWAPPED, f"gpu011 replaced by gpu012 in {name}."),
            (Incident.Kind.NODE_UNHEALTHY, node.status_reason),
        ]
        view = slurm.scontrol("-o", "show", "res", name).stdout
        with django_capture_on_commit_callbacks(execute=True):
            assert provisioning.provisioning_reconcile() == {
                "retried": 0,
                "unhealthy": 0,
                "healed": 0,
                "leftovers": 0,
            }
        assert slurm.scontrol("-o", "show", "res", name).stdout == view
        assert Incident.objects.count() == 2
    finally:
        slurm.start_slurmd("gpu011")
