"""Inventory from Slurm: read a cluster's nodes and GPUs (`scontrol -o show nodes`) and make our
`Cluster` match them. New nodes are added, vanished ones retired (their live reservations get
an incident), GPU counts follow Slurm's Gres. Used by `manage.py slurm_import` and the
cluster admin's "Re-sync from Slurm" action; running it twice changes nothing the second time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import audit
from core.dates import format_datetime
from core.errors import NotAllowed, ServiceError

from ...incidents import incident_open
from ...models import Allocation, Cluster, GpuModel, Incident, Node, Region
from .. import DriverError
from .commands import Runner, SlurmCommandError, classify
from .parsing import NODE_RE, parse_key_values

RETIRED_REASON = "No longer in Slurm"  # how we tell our retirements from staff's


@dataclass(frozen=True)
class SlurmNode:
    name: str
    gpus: int
    gpu_types: tuple[str, ...] = ()
    partitions: tuple[str, ...] = ()
    state: str = ""
    reason: str = ""

    @property
    def down(self) -> bool:
        """Slurm would run nothing on it: down, drained or draining, failed, not responding."""
        flags = set(re.split(r"[+]", self.state.upper().rstrip("*~#!%$@^-")))
        return self.state.endswith("*") or bool(
            flags & {"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "NOT_RESPONDING"}
        )


def _plain_name(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def gpu_type_fits(types: tuple[str, ...], gpu_model: GpuModel) -> bool:
    """Whether every GPU type a node's Gres names is the cluster's model ("h100" fits H100 SXM,
    slug h100-sxm). A node that names no type fits: Slurm then does not say."""
    ours = {_plain_name(gpu_model.slug), _plain_name(gpu_model.name)}
    return all(any(t and (t in o or o in t) for o in ours) for t in map(_plain_name, types))


def gres_gpus(gres: str) -> tuple[int, tuple[str, ...]]:
    """`gpu:h100:8(S:0-1),nic:1` -> (8, ("h100",)); `gpu:8` -> (8, ()); `(null)` -> (0, ())."""
    count = 0
    types: list[str] = []
    # "(S:0,2)" holds commas of its own: drop the groups before splitting the list.
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        item = item.strip()
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        try:
            count += int(parts[-1])
        except ValueError:
            continue
        if len(parts) == 3:
            types.append(parts[1])
    return count, tuple(sorted(set(types)))


def parse_nodes(output: str) -> list[SlurmNode]:
    """`scontrol -o show nodes`: one node a line."""
    nodes = []
    for line in output.splitlines():
        if not line.startswith("NodeName="):
            continue
        fields = parse_key_values(line)
        gpus, types = gres_gpus(fields.get("Gres", ""))
        partitions = fields.get("Partitions", "")
        nodes.append(
            SlurmNode(
                name=fields["NodeName"],
                gpus=gpus,
                gpu_types=types,
                partitions=tuple(p for p in partitions.split(",") if p),
                state=fields.get("State", ""),
                reason=fields.get("Reason", ""),
            )
        )
    return sorted(nodes, key=lambda n: n.name)


def read_nodes(*, partition: str = "", runner: Runner | None = None) -> list[SlurmNode]:
    """The controller's GPU nodes (in `partition` when given). Raises ServiceError with Slurm's
    message when it cannot be read."""
    runner = runner or Runner(
        bin_dir=settings.SLURM_BIN_DIR,
        conf=settings.SLURM_CONF,
        timeout=settings.SLURM_COMMAND_TIMEOUT,
    )
    try:
        output = runner("scontrol", "-o", "show", "nodes")
    except SlurmCommandError as exc:
        raise ServiceError(str(classify(exc))) from exc
    except DriverError as exc:
        raise ServiceError(str(exc)) from exc
    nodes = parse_nodes(output)
    if partition:
        nodes = [n for n in nodes if partition in n.partitions]
    return nodes


def enabled() -> bool:
    """The Slurm driver provisions (so there is a Slurm cluster to sync from)."""
    return settings.PROVISIONING_DRIVER.rsplit(".", 1)[-1] == "SlurmDriver"


@dataclass
class SyncResult:
    cluster: Cluster
    created: bool = False
    added: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    down: list[str] = field(default_factory=list)  # added in maintenance: Slurm has them down
    gpus_changed: list[tuple[str, int, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # no GPUs, a name we cannot use, taken
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(
            self.created or self.added or self.retired or self.returned or self.gpus_changed
        )

    def summary(self) -> str:
        parts = [f"{self.cluster.code}: " + ("created" if self.created else "synced")]
        if self.added:
            parts.append(f"added {', '.join(self.added)}")
        if self.returned:
            parts.append(f"back from retirement {', '.join(self.returned)}")
        if self.down:
            parts.append(f"in maintenance as Slurm has them down: {', '.join(self.down)}")
        if self.gpus_changed:
            parts.append(
                "GPUs " + ", ".join(f"{name} {old} → {new}" for name, old, new in self.gpus_changed)
            )
        if self.retired:
            parts.append(f"retired {', '.join(self.retired)} (no longer in Slurm)")
        if self.skipped:
            parts.append(f"skipped {'; '.join(self.skipped)}")
        if not self.changed:
            parts.append(f"nothing changed ({self.unchanged} nodes)")
        elif self.unchanged:
            parts.append(f"{self.unchanged} unchanged")
        return ", ".join(parts)


@transaction.atomic
def cluster_sync(
    *,
    code: str,
    nodes: list[SlurmNode],
    region: Region | None = None,
    gpu_model: GpuModel | None = None,
    fabric: str = "",
    actor: Any | None = None,
) -> SyncResult:
    """Create or update cluster `code` so its nodes are Slurm's GPU nodes.

    Locks the cluster row and its nodes. A new cluster needs `region` and `gpu_model`; an
    existing one keeps both (its bookings are priced as that pool). `actor` is the staff
    user (must hold capacity.change_cluster) or None for the command line.
    """
    if actor is not None and not (actor.is_staff and actor.has_perm("capacity.change_cluster")):
        raise NotAllowed("You are not allowed to change clusters.")
    cluster = Cluster.objects.select_for_update().filter(code=code).first()
    if cluster is None:
        if region is None or gpu_model is None:
            raise ServiceError(
                f"There is no cluster {code} yet: give its region and GPU model to create it."
            )
        cluster = Cluster(code=code, region=region, gpu_model=gpu_model)
        if fabric:
            cluster.fabric = fabric
        cluster.full_clean()
        cluster.save()
        result = SyncResult(cluster=cluster, created=True)
    else:
        result = SyncResult(cluster=cluster)
        for name, given, current in (
            ("region", region, cluster.region),
            ("GPU model", gpu_model, cluster.gpu_model),
        ):
            if given is not None and given != current:
                raise ServiceError(
                    f"Cluster {code} is {current} ({name}); a different {name} is a new cluster."
                )
        if fabric and fabric != cluster.fabric:
            cluster.fabric = fabric
            cluster.full_clean()
            cluster.save(update_fields=["fabric"])
    ours = {n.hostname: n for n in Node.objects.select_for_update().filter(cluster=cluster)}
    taken = set(
        Node.objects.filter(hostname__in=[n.name for n in nodes])
        .exclude(cluster=cluster)
        .values_list("hostname", flat=True)
    )
    in_service = [n for n in ours.values() if n.status != Node.Status.RETIRED]
    if in_service and not {n.name for n in nodes} & {n.hostname for n in in_service}:
        # Slurm listing none of them is a wrong partition or controller, not a cluster gone:
        # retiring every node would stop selling the cluster and strand its bookings.
        raise ServiceError(
            f"Slurm listed none of the {len(in_service)} nodes of {cluster.code} (check the "
            "partition and SLURM_CONF); nothing was changed."
        )
    seen = set()
    for slurm_node in nodes:
        name = slurm_node.name
        if not NODE_RE.fullmatch(name):
            result.skipped.append(f"{name} (not a name we can use)")
            continue
        if slurm_node.gpus == 0:
            result.skipped.append(f"{name} (no GPUs)")
            continue
        if name in taken:
            result.skipped.append(f"{name} (belongs to another cluster)")
            continue
        if not gpu_type_fits(slurm_node.gpu_types, cluster.gpu_model):
            kinds = ", ".join(slurm_node.gpu_types)
            result.skipped.append(f"{name} ({kinds} GPUs, not {cluster.gpu_model.name})")
            continue
        seen.add(name)
        node = ours.get(name)
        if node is None:
            if slurm_node.down:
                # Not sold until operations bring it back (the health sweep only looks at
                # nodes in service, so one added as available would be sold until it ran).
                why = f"Slurm reports it {slurm_node.state}" + (
                    f": {slurm_node.reason}" if slurm_node.reason else ""
                )
                Node.objects.create(
                    cluster=cluster,
                    hostname=name,
                    gpu_count=slurm_node.gpus,
                    status=Node.Status.MAINTENANCE,
                    status_reason=why[:200],
                )
                result.down.append(name)
            else:
                Node.objects.create(cluster=cluster, hostname=name, gpu_count=slurm_node.gpus)
            result.added.append(name)
            continue
        fields = []
        if node.gpu_count != slurm_node.gpus:
            result.gpus_changed.append((name, node.gpu_count, slurm_node.gpus))
            node.gpu_count = slurm_node.gpus
            fields.append("gpu_count")
        if node.status == Node.Status.RETIRED and node.status_reason.startswith(RETIRED_REASON):
            node.status, node.status_reason = Node.Status.AVAILABLE, ""
            fields += ["status", "status_reason"]
            result.returned.append(name)
        if fields:
            node.save(update_fields=fields)
        else:
            result.unchanged += 1
    now = timezone.now()
    for name, node in sorted(ours.items()):
        if name in seen or node.status == Node.Status.RETIRED:
            continue
        node.status = Node.Status.RETIRED
        node.status_reason = f"{RETIRED_REASON} ({format_datetime(now)})"
        node.save(update_fields=["status", "status_reason"])
        result.retired.append(name)
        holding = (
            Allocation.objects.filter(node=node, released_at__isnull=True, ends_at__gt=now)
            .select_related("reservation")
            .order_by("starts_at")
        )
        for allocation in holding:
            incident_open(
                kind=Incident.Kind.NODE_UNHEALTHY,
                node=node,
                reservation=allocation.reservation,
                detail=(
                    f"{name} left Slurm cluster {code} while "
                    f"{allocation.reservation.public_id} holds it."
                ),
            )
    if result.changed or actor is not None:  # staff re-syncs are audited even when idle
        audit.record(
            action="cluster.slurm_synced",
            actor=actor,
            target=cluster,
            data={
                "created": result.created,
                "added": result.added,
                "retired": result.retired,
                "returned": result.returned,
                "down": result.down,
                "gpus": {name: [old, new] for name, old, new in result.gpus_changed},
                "skipped": result.skipped,
            },
        )
    return result


def cluster_partition(cluster: Cluster, nodes: list[SlurmNode]) -> str:
    """The Slurm partition every node we already have of `cluster` is in, when there is
    exactly one: a re-sync then reads that partition only, not the whole controller."""
    known = {n.hostname for n in Node.objects.filter(cluster=cluster)}
    common: set[str] | None = None
    for node in nodes:
        if node.name in known:
            common = set(node.partitions) if common is None else common & set(node.partitions)
    return next(iter(common)) if common and len(common) == 1 else ""


def cluster_resync(*, cluster: Cluster, actor: Any | None, nodes: list[SlurmNode]) -> SyncResult:
    """Re-sync an existing cluster from Slurm's nodes (the admin action and the command)."""
    partition = cluster_partition(cluster, nodes)
    if partition:
        nodes = [n for n in nodes if partition in n.partitions]
    return cluster_sync(code=cluster.code, nodes=nodes, actor=actor)
