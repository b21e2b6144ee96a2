"""Importing a Slurm cluster's nodes and GPUs into our inventory, and re-syncing it."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from capacity.drivers.slurm.inventory import SlurmNode, cluster_sync, gres_gpus, parse_nodes
from capacity.models import Cluster, GpuModel, Incident, Node, Region
from core.errors import ServiceError
from core.models import AuditEvent
from tests.backoffice.conftest import make_staff, verified_client

from .conftest import DRIVER, block

pytestmark = pytest.mark.django_db

SHOW_NODES = "\n".join(
    [
        "NodeName=gpu001 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 Gres=gpu:h100:8(S:0-1) "
        "NodeAddr=127.0.0.1 OS=Linux 6.1 #1 SMP State=IDLE Partitions=gpu,all",
        "NodeName=gpu002 Arch=x86_64 Gres=gpu:h100:4,gpu:a100:4,nic:1 State=MIXED Partitions=gpu",
        "NodeName=login1 Arch=x86_64 Gres=(null) State=IDLE Partitions=all",
    ]
)


def test_gres_gives_the_gpu_count_and_types():
    assert gres_gpus("gpu:h100:8") == (8, ("h100",))
    assert gres_gpus("gpu:8") == (8, ())
    assert gres_gpus("gpu:h100:8(S:0-1),nic:1") == (8, ("h100",))
    assert gres_gpus("gpu:h100:4,gpu:a100:4") == (8, ("a100", "h100"))
    assert gres_gpus("(null)") == (0, ())
    assert gres_gpus("gpu:h100:4(S:0,2)") == (4, ("h100",))
    assert gres_gpus("gpu:h100:4(S:0,2),gpu:a100:2(S:1,3),nic:1") == (6, ("a100", "h100"))


def test_scontrol_show_nodes_is_parsed_exactly():
    assert parse_nodes(SHOW_NODES) == [
        SlurmNode("gpu001", 8, ("h100",), ("gpu", "all"), "IDLE"),
        SlurmNode("gpu002", 8, ("a100", "h100"), ("gpu",), "MIXED"),
        SlurmNode("login1", 0, (), ("all",), "IDLE"),
    ]


@pytest.fixture
def pool(db):
    return (
        Region.objects.create(code="test-1", name="Test 1"),
        GpuModel.objects.create(slug="h100", name="H100", memory_gb=80),
    )


def _nodes(*names: str, gpus: int = 8) -> list[SlurmNode]:
    return [SlurmNode(name, gpus, ("h100",), ("gpu",)) for name in names]


def test_a_sync_adds_updates_and_retires_and_twice_changes_nothing(pool, slurm_org):
    region, h100 = pool
    first = cluster_sync(
        code="slurm-a", nodes=_nodes("gpu001", "gpu002"), region=region, gpu_model=h100
    )
    assert (first.created, first.added) == (True, ["gpu001", "gpu002"])
    cluster = Cluster.objects.get(code="slurm-a")
    held = block(slurm_org, cluster, ["gpu002"])

    again = cluster_sync(code="slurm-a", nodes=_nodes("gpu001", "gpu002"))
    assert (again.changed, again.summary()) == (False, "slurm-a: synced, nothing changed (2 nodes)")

    changed = cluster_sync(
        code="slurm-a",
        nodes=[*_nodes("gpu001", gpus=4), *_nodes("gpu003"), *_nodes("cpu1", gpus=0)],
    )
    assert changed.summary() == (
        "slurm-a: synced, added gpu003, GPUs gpu001 8 → 4, retired gpu002 (no longer in Slurm), "
        "skipped cpu1 (no GPUs)"
    )
    assert list(cluster.nodes.values_list("hostname", "gpu_count", "status")) == [
        ("gpu001", 4, "available"),
        ("gpu002", 8, "retired"),
        ("gpu003", 8, "available"),
    ]
    incident = Incident.objects.get()
    assert (incident.reservation, incident.detail) == (
        held,
        f"gpu002 left Slurm cluster slurm-a while {held.public_id} holds it.",
    )
    back = cluster_sync(code="slurm-a", nodes=_nodes("gpu001", "gpu002", "gpu003", gpus=4))
    assert back.returned == ["gpu002"]
    assert Node.objects.get(hostname="gpu002").status == "available"
    assert AuditEvent.objects.filter(action="cluster.slurm_synced").count() == 3


def test_a_sync_that_matches_none_of_the_nodes_retires_nothing(pool):
    region, h100 = pool
    cluster_sync(code="slurm-a", nodes=_nodes("gpu001", "gpu002"), region=region, gpu_model=h100)
    with pytest.raises(ServiceError) as refused:
        cluster_sync(code="slurm-a", nodes=_nodes("other01"))
    assert refused.value.message == (
        "Slurm listed none of the 2 nodes of slurm-a (check the partition and SLURM_CONF); "
        "nothing was changed."
    )
    assert list(Node.objects.order_by("hostname").values_list("hostname", "status")) == [
        ("gpu001", "available"),
        ("gpu002", "available"),
    ]


def test_a_node_of_another_cluster_is_not_taken_and_the_pool_cannot_change(pool):
    region, h100 = pool
    cluster_sync(code="slurm-a", nodes=_nodes("gpu001"), region=region, gpu_model=h100)
    other = cluster_sync(
        code="slurm-b", nodes=_nodes("gpu001", "gpu002"), region=region, gpu_model=h100
    )
    assert (other.added, other.skipped) == (["gpu002"], ["gpu001 (belongs to another cluster)"])
    b200 = GpuModel.objects.create(slug="b200", name="B200", memory_gb=192)
    with pytest.raises(ServiceError, match="a different GPU model is a new cluster"):
        cluster_sync(code="slurm-a", nodes=_nodes("gpu001"), gpu_model=b200)


def test_nodes_of_another_gpu_model_are_skipped(pool):
    region, h100 = pool
    nodes = [
        SlurmNode("gpu001", 8, ("h100",), ("gpu",)),
        SlurmNode("gpu002", 8, ("a100",), ("gpu",)),
        SlurmNode("gpu003", 8, ("a100", "h100"), ("gpu",)),  # half of them another model
        SlurmNode("gpu004", 8, (), ("gpu",)),  # Slurm does not say which
    ]
    result = cluster_sync(code="slurm-a", nodes=nodes, region=region, gpu_model=h100)
    assert (result.added, result.skipped) == (
        ["gpu001", "gpu004"],
        ["gpu002 (a100 GPUs, not H100)", "gpu003 (a100, h100 GPUs, not H100)"],
    )
    sxm = GpuModel.objects.create(slug="h100-sxm", name="H100 SXM", memory_gb=80)
    other = cluster_sync(
        code="slurm-b", nodes=[SlurmNode("gpu101", 8, ("h100",))], region=region, gpu_model=sxm
    )
    assert other.added == ["gpu101"]


@pytest.mark.parametrize(
    ("state", "down"),
    [
        ("IDLE", False),
        ("MIXED", False),
        ("ALLOCATED", False),
        ("DOWN", True),
        ("DOWN*", True),
        ("IDLE*", True),
        ("IDLE+DRAIN", True),
        ("MIXED+DRAIN", True),
        ("DOWN+NOT_RESPONDING", True),
        ("IDLE+FAIL", True),
    ],
)
def test_which_slurm_node_states_are_down(state, down):
    assert SlurmNode("gpu001", 8, state=state).down is down


def test_a_node_slurm_has_down_is_added_in_maintenance(pool):
    region, h100 = pool
    nodes = [
        SlurmNode("gpu001", 8, ("h100",), ("gpu",), "IDLE"),
        SlurmNode("gpu002", 8, ("h100",), ("gpu",), "IDLE+DRAIN", "fan failure"),
    ]
    result = cluster_sync(code="slurm-a", nodes=nodes, region=region, gpu_model=h100)
    assert (result.added, result.down) == (["gpu001", "gpu002"], ["gpu002"])
    assert list(
        Node.objects.order_by("hostname").values_list("hostname", "status", "status_reason")
    ) == [
        ("gpu001", "available", ""),
        ("gpu002", "maintenance", "Slurm reports it IDLE+DRAIN: fan failure"),
    ]
    assert "in maintenance as Slurm has them down: gpu002" in result.summary()


def test_the_import_command_reads_a_real_slurm_cluster(slurm, pool):
    out = StringIO()
    call_command(
        "slurm_import",
        "--cluster=slurm-real",
        "--region=test-1",
        "--gpu-model=h100",
        "--fabric=Loopback",
        stdout=out,
    )
    names = ", ".join(slurm.node_names)
    assert out.getvalue() == f"slurm-real: created, added {names}\n"
    cluster = Cluster.objects.get(code="slurm-real")
    assert cluster.fabric == "Loopback"
    assert list(cluster.nodes.values_list("hostname", "gpu_count")) == [
        (name, 8) for name in slurm.node_names
    ]
    out = StringIO()
    call_command("slurm_import", "--cluster=slurm-real", stdout=out)  # a re-sync
    assert (
        out.getvalue() == f"slurm-real: synced, nothing changed ({len(slurm.node_names)} nodes)\n"
    )


def test_the_import_command_says_what_is_missing(slurm, pool):
    with pytest.raises(CommandError, match="give its region and GPU model to create it"):
        call_command("slurm_import", "--cluster=nowhere")
    with pytest.raises(CommandError, match="No GPU model with the slug 'x100'"):
        call_command("slurm_import", "--cluster=nowhere", "--region=test-1", "--gpu-model=x100")


def test_operations_re_sync_a_cluster_from_the_admin_and_it_is_audited(slurm, pool, settings):
    region, h100 = pool
    cluster = Cluster.objects.create(code="slurm-real", region=region, gpu_model=h100)
    Node.objects.create(cluster=cluster, hostname="gpu001", gpu_count=4)
    Node.objects.create(cluster=cluster, hostname="gone01")
    operator = make_staff("Operations")
    client = verified_client(operator)
    url = reverse("admin:capacity_cluster_changelist")
    asked = {"action": "resync_from_slurm", "_selected_action": [cluster.pk]}
    preview = client.post(url, asked)
    added = ", ".join(slurm.node_names[1:])
    assert preview.status_code == 200
    [section] = preview.context["sections"]
    assert section.rows == [
        ["Add", added],
        ["Retire (no longer in Slurm)", "gone01"],
        ["GPU count", "gpu001 4 → 8"],
    ]
    # Nothing happened yet: the preview was worked out and rolled back.
    assert sorted(cluster.nodes.values_list("hostname", "status", "gpu_count")) == [
        ("gone01", "available", 8),
        ("gpu001", "available", 4),
    ]
    assert not AuditEvent.objects.filter(action="cluster.slurm_synced").exists()
    response = client.post(url, {**asked, "apply": "yes"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        f"Cluster slurm-real: synced, added {added}, GPUs gpu001 4 → 8, retired gone01 "
        "(no longer in Slurm)."
    ]
    event = AuditEvent.objects.get(action="cluster.slurm_synced")
    assert (event.actor, event.object_id, event.data["retired"]) == (
        operator,
        str(cluster.pk),
        ["gone01"],
    )


def test_only_staff_who_may_change_clusters_are_offered_the_re_sync(settings, db):
    from django.contrib import admin
    from django.test import RequestFactory

    model_admin = admin.site._registry[Cluster]

    def offered(user) -> bool:
        request = RequestFactory().get("/admin/")
        request.user = user
        return "resync_from_slurm" in model_admin.get_actions(request)

    operator, sales = make_staff("Operations"), make_staff("Sales")
    assert (offered(operator), offered(sales)) == (False, False)  # the simulated driver
    settings.PROVISIONING_DRIVER = DRIVER
    assert (offered(operator), offered(sales)) == (True, False)
