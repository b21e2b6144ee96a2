"""Reads: the catalog, availability, and an organization's reservations."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import BigIntegerField, Count, Exists, Func, OuterRef, Q, QuerySet
from django.db.models.sql.compiler import SQLCompiler

from accounts.models import Organization
from core.models import AuditEvent

from .models import (
    Allocation,
    Cluster,
    DurationDiscount,
    Extension,
    GpuModel,
    ListPrice,
    Node,
    Region,
    Reservation,
)

if TYPE_CHECKING:
    from django.db.models.sql.compiler import _AsSqlType

HOUR = timedelta(hours=1)
LIVE_STATES = ("held", "scheduled", "provisioning", "active", "releasing")


# --- Catalog ----------------------------------------------------------------------------------
def gpu_models() -> QuerySet[GpuModel]:
    return GpuModel.objects.filter(is_active=True)


def regions() -> QuerySet[Region]:
    return Region.objects.filter(is_active=True)


@dataclass(frozen=True)
class RegionPrice:
    region: Region
    per_gpu_hour: Decimal
    per_node_hour: Decimal
    currency: str


@dataclass(frozen=True)
class PriceListEntry:
    """One GPU model with its list price in each region that sells it, by region code."""

    gpu_model: GpuModel
    prices: list[RegionPrice]

    @property
    def lowest(self) -> RegionPrice:
        return min(self.prices, key=lambda price: price.per_gpu_hour)


def offered_prices() -> QuerySet[ListPrice]:
    """The list prices of what can be reserved: an active GPU model in an active region, with
    an active cluster of it there. The price list and the catalog API both read this."""
    cluster = Cluster.objects.filter(
        is_active=True, gpu_model=OuterRef("gpu_model"), region=OuterRef("region")
    )
    return ListPrice.objects.filter(
        Exists(cluster), gpu_model__is_active=True, region__is_active=True
    )


def price_list() -> list[PriceListEntry]:
    """The public price list: every GPU model on sale with its price in each region that
    offers it, in catalog order. A model offered nowhere is left out. One query."""
    prices = (
        offered_prices()
        .select_related("gpu_model", "region")
        .order_by("gpu_model__sort_order", "gpu_model__name", "gpu_model_id", "region__code")
    )
    entries: dict[int, PriceListEntry] = {}
    for price in prices:
        gpu = price.gpu_model
        entry = entries.setdefault(gpu.pk, PriceListEntry(gpu, []))
        entry.prices.append(
            RegionPrice(
                region=price.region,
                per_gpu_hour=price.price_per_gpu_hour,
                per_node_hour=price.price_per_gpu_hour * gpu.gpus_per_node,
                currency=price.currency,
            )
        )
    return list(entries.values())


def duration_discounts() -> QuerySet[DurationDiscount]:
    return DurationDiscount.objects.order_by("min_hours")


def pool_clusters(gpu_model: GpuModel, region: Region | None = None) -> list[Cluster]:
    """Active clusters of a GPU model (in one region, or all), in lock order (by pk)."""
    clusters = Cluster.objects.filter(gpu_model=gpu_model, is_active=True, region__is_active=True)
    if region is not None:
        clusters = clusters.filter(region=region)
    return list(clusters.select_related("region").order_by("pk"))


# --- Availability -----------------------------------------------------------------------------
def _busy_node_ids(cluster_ids: list[int], starts_at: datetime, ends_at: datetime) -> set[int]:
    return set(
        Allocation.objects.filter(
            cluster_id__in=cluster_ids,
            released_at__isnull=True,
            starts_at__lt=ends_at,
            ends_at__gt=starts_at,
        )
        # No DISTINCT: it would steer SQLite into reading the node index in order.
        .values_list("node_id", flat=True)
    )


def free_nodes_in_pool(
    cluster_ids: list[int], starts_at: datetime, ends_at: datetime
) -> dict[int, list[int]]:
    """The free node ids of each cluster (in hostname order) for [starts_at, ends_at).

    Two range scans (the pool's available nodes, and the nodes its live allocations hold in
    the window) instead of probing every node's allocations: the probe costs a lookup per node,
    which on a busy pool of thousands of nodes was most of a search.
    """
    cluster_ids = list(cluster_ids)
    busy = _busy_node_ids(cluster_ids, starts_at, ends_at)
    free: dict[int, list[int]] = {}
    nodes = (
        Node.objects.filter(cluster_id__in=cluster_ids, status=Node.Status.AVAILABLE)
        .order_by("cluster_id", "hostname")
        .values_list("cluster_id", "pk")
    )
    for cluster_id, node_id in nodes:
        if node_id not in busy:
            free.setdefault(cluster_id, []).append(node_id)
    return free


def free_nodes_by_cluster(
    cluster_ids: Iterable[int], starts_at: datetime, ends_at: datetime
) -> dict[int, int]:
    """How many available nodes of each cluster have no live allocation in [starts_at, ends_at)."""
    free = free_nodes_in_pool(list(cluster_ids), starts_at, ends_at)
    return {cluster_id: len(nodes) for cluster_id, nodes in free.items()}


def free_node_ids(cluster: Cluster, starts_at: datetime, ends_at: datetime) -> list[int]:
    return free_nodes_in_pool([cluster.pk], starts_at, ends_at).get(cluster.pk, [])


@dataclass(frozen=True)
class Occupancy:
    """Which available node of a pool is busy in which hour, from `start` on, hour by hour."""

    start: datetime
    node_ids: np.ndarray  # (nodes,)
    cluster_ids: np.ndarray  # (nodes,)
    busy: np.ndarray  # (nodes, hours) of bool

    def free_counts(self, window_hours: int) -> dict[int, np.ndarray]:
        """For every cluster: free nodes for a window of `window_hours` starting at each hour."""
        hours = self.busy.shape[1]
        starts = hours - window_hours + 1
        if starts <= 0 or len(self.node_ids) == 0:
            return {}
        cumulative = np.zeros((len(self.node_ids), hours + 1), dtype=np.int32)
        np.cumsum(self.busy, axis=1, out=cumulative[:, 1:])
        busy_in_window = (
            cumulative[:, window_hours : window_hours + starts] - cumulative[:, :starts]
        )
        free = busy_in_window == 0
        return {
            int(cluster): free[self.cluster_ids == cluster].sum(axis=0)
            for cluster in np.unique(self.cluster_ids)
        }

    def free_per_hour(self) -> np.ndarray:
        return (~self.busy).sum(axis=0)


class EpochSeconds(Func):
    """A timestamp as whole seconds since 1970: reading thousands of rows as integers skips
    the per-row datetime conversion that dominates the availability calculations."""

    output_field = BigIntegerField()

    # Four percent signs: one pair for this template, one for the SQLite backend, which turns
    # a lone %s into a query parameter.
    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> "_AsSqlType":
        return self.as_sql(
            compiler,
            connection,
            template="CAST(strftime('%%%%s', %(expressions)s) AS INTEGER)",
            **extra,
        )

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> "_AsSqlType":
        return self.as_sql(
            compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::bigint", **extra
        )


def occupancy(clusters: list[Cluster], start: datetime, hours: int) -> Occupancy:
    """Hour-by-hour busy matrix of the available nodes of `clusters`, from `start` for `hours`."""
    cluster_ids = [c.pk for c in clusters]
    nodes = list(
        Node.objects.filter(cluster_id__in=cluster_ids, status=Node.Status.AVAILABLE)
        .order_by("pk")
        .values_list("pk", "cluster_id")
    )
    node_ids = np.array([n for n, _ in nodes], dtype=np.int64)
    node_clusters = np.array([c for _, c in nodes], dtype=np.int64)
    busy = np.zeros((len(nodes), hours), dtype=bool)
    end = start + hours * HOUR
    rows = list(
        Allocation.objects.filter(
            cluster_id__in=cluster_ids,
            released_at__isnull=True,
            starts_at__lt=end,
            ends_at__gt=start,
        )
        .annotate(first=EpochSeconds("starts_at"), last=EpochSeconds("ends_at"))
        .values_list("node_id", "first", "last")
    )
    if nodes and rows:
        allocated = np.array(rows, dtype=np.int64)
        row = np.searchsorted(node_ids, allocated[:, 0])
        known = (row < len(node_ids)) & (
            node_ids[np.minimum(row, len(node_ids) - 1)] == allocated[:, 0]
        )
        origin = int(start.timestamp())
        first = np.clip((allocated[known, 1] - origin) // 3600, 0, hours)
        last = np.clip(-((origin - allocated[known, 2]) // 3600), 0, hours)  # ceiling
        # +1 where a block starts, -1 where it ends; a running sum > 0 means busy.
        edges = np.zeros((len(nodes), hours + 1), dtype=np.int32)
        np.add.at(edges, (row[known], first), 1)
        np.add.at(edges, (row[known], last), -1)
        busy = np.cumsum(edges, axis=1)[:, :hours] > 0
    return Occupancy(start=start, node_ids=node_ids, cluster_ids=node_clusters, busy=busy)


# --- Reservations -----------------------------------------------------------------------------
def reservations_for_org(organization: Organization) -> QuerySet[Reservation]:
    return Reservation.objects.filter(organization=organization).select_related(
        "gpu_model", "region", "cluster"
    )


def reservation_for_org(organization: Organization, public_id: str) -> Reservation | None:
    return reservations_for_org(organization).filter(public_id=public_id).first()


def reservation_counts(organization: Organization) -> dict[str, int]:
    rows = (
        Reservation.objects.filter(organization=organization, state__in=LIVE_STATES)
        .values("state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {row["state"]: row["n"] for row in rows}


def reservation_timeline(reservation: Reservation) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(
        object_type=Reservation._meta.label_lower, object_id=str(reservation.pk)
    ).order_by("created_at", "id")


def lapsed_holds(now: datetime, cluster_ids: list[int] | None = None) -> QuerySet[Reservation]:
    holds = Reservation.objects.filter(state=Reservation.State.HELD, hold_expires_at__lte=now)
    if cluster_ids is not None:
        holds = holds.filter(cluster_id__in=cluster_ids)
    return holds.order_by("pk")


def other_live_allocations(
    reservation: Reservation, starts_at: datetime, ends_at: datetime
) -> QuerySet[Allocation]:
    """Live allocations of other reservations on this reservation's nodes within a window."""
    nodes = Allocation.objects.filter(reservation=reservation).values("node_id")
    return Allocation.objects.filter(
        Q(node_id__in=nodes),
        ~Q(reservation=reservation),
        released_at__isnull=True,
        starts_at__lt=ends_at,
        ends_at__gt=starts_at,
    )


def reservation_live_node_ids(reservation: Reservation) -> list[int]:
    """The nodes a reservation runs on now (not the hours its extensions hold)."""
    return list(
        Allocation.objects.filter(
            reservation=reservation, released_at__isnull=True, extension__isnull=True
        )
        .order_by("node_id")
        .values_list("node_id", flat=True)
    )


def extension_blockers(
    reservation: Reservation,
    starts_at: datetime,
    ends_at: datetime,
    extension: Extension | None = None,
) -> QuerySet[Allocation]:
    """Live allocations on the reservation's nodes within a window, other than the hours
    `extension` itself holds: anything here keeps the reservation from running on."""
    busy = Allocation.objects.filter(
        node_id__in=reservation_live_node_ids(reservation),
        released_at__isnull=True,
        starts_at__lt=ends_at,
        ends_at__gt=starts_at,
    ).exclude(reservation=reservation, extension__isnull=True)
    if extension is not None:
        busy = busy.exclude(extension=extension)
    return busy


def lapsed_extension_holds(
    now: datetime, cluster_ids: list[int] | None = None
) -> QuerySet[Extension]:
    holds = Extension.objects.filter(state=Extension.State.HELD, hold_expires_at__lte=now)
    if cluster_ids is not None:
        holds = holds.filter(reservation__cluster_id__in=cluster_ids)
    return holds.order_by("pk")


def extensions_for_reservation(reservation: Reservation) -> QuerySet[Extension]:
    return Extension.objects.filter(reservation=reservation).order_by("-created_at", "-id")


# --- Operations: draining nodes, the cluster timeline -----------------------------------------
MOVABLE_STATES = ("held", "scheduled", "provisioning", "active")


def pool_of(cluster: Cluster) -> list[Cluster]:
    """The clusters an allocator of `cluster`'s pool locks, with `cluster` itself even when it
    is no longer active (its rows still need the same lock before nodes move)."""
    pool = Cluster.objects.filter(
        gpu_model_id=cluster.gpu_model_id,
        region_id=cluster.region_id,
        is_active=True,
        region__is_active=True,
    )
    clusters = {c.pk: c for c in pool}
    clusters.setdefault(cluster.pk, cluster)
    return [clusters[pk] for pk in sorted(clusters)]


def node_commitments(
    node: Node, now: datetime, states: Iterable[str] = MOVABLE_STATES
) -> QuerySet[Allocation]:
    """Live allocations `node` holds now or later for reservations in `states`, soonest first."""
    return (
        Allocation.objects.filter(
            node=node, released_at__isnull=True, ends_at__gt=now, reservation__state__in=states
        )
        .select_related("node", "reservation__organization")
        .order_by("starts_at", "pk")
    )


@dataclass(frozen=True)
class Move:
    """What is left of one allocation ([starts_at, allocation.ends_at)) and the free node of
    the same cluster that can take it (None: no spare)."""

    allocation: Allocation
    starts_at: datetime
    spare_id: int | None


def plan_moves(
    node: Node,
    now: datetime,
    *,
    states: Iterable[str] = MOVABLE_STATES,
    avoid: Iterable[int] = (),
    claimed: list[tuple[int, datetime, datetime]] | None = None,
) -> list[Move]:
    """A spare for every commitment of `node`: the first free node of its cluster in hostname
    order that is not in `avoid`, has never been one of the reservation's nodes (a reservation
    holds a node at most once), and is not in `claimed` for an overlapping period. `claimed`
    (spare, start, end) grows with each pick, so the plans of several nodes drained one after
    the other, sharing one list, propose what the drains will do. Read under the pool lock to
    act on it."""
    commitments = list(node_commitments(node, now, states))
    if not commitments:
        return []
    avoid = {*avoid, node.pk}
    held_before: dict[int, set[int]] = {}
    for reservation_id, node_id in Allocation.objects.filter(
        reservation_id__in={a.reservation_id for a in commitments}
    ).values_list("reservation_id", "node_id"):
        held_before.setdefault(reservation_id, set()).add(node_id)
    picked = claimed if claimed is not None else []
    moves = []
    for allocation in commitments:
        starts_at = max(allocation.starts_at, now)
        ends_at = allocation.ends_at
        taken = {n for n, s, e in picked if s < ends_at and e > starts_at}
        excluded = avoid | held_before[allocation.reservation_id] | taken
        spare = next(
            (
                n
                for n in free_nodes_in_pool([node.cluster_id], starts_at, ends_at).get(
                    node.cluster_id, []
                )
                if n not in excluded
            ),
            None,
        )
        if spare is not None:
            picked.append((spare, starts_at, ends_at))
        moves.append(Move(allocation=allocation, starts_at=starts_at, spare_id=spare))
    return moves


@dataclass(frozen=True)
class TimelineData:
    nodes: Sequence[Mapping[str, Any]]  # pk, hostname, status, status_reason
    # node_id, starts_at, ends_at and the reservation's fields:
    allocations: Sequence[Mapping[str, Any]]


def cluster_timeline(cluster: Cluster, starts_at: datetime, ends_at: datetime) -> TimelineData:
    """The nodes of a cluster and the live allocations overlapping [starts_at, ends_at): two
    queries, whatever the number of nodes or reservations."""
    nodes = list(
        Node.objects.filter(cluster=cluster)
        .order_by("hostname")
        .values("pk", "hostname", "status", "status_reason")
    )
    allocations = list(
        Allocation.objects.filter(
            cluster=cluster, released_at__isnull=True, starts_at__lt=ends_at, ends_at__gt=starts_at
        )
        .order_by("node_id", "starts_at")
        .values(
            "node_id",
            "starts_at",
            "ends_at",
            "reservation_id",
            "reservation__public_id",
            "reservation__state",
            "reservation__organization__name",
        )
    )
    return TimelineData(nodes=nodes, allocations=allocations)


def reservations_by_state() -> dict[str, int]:
    """How many reservations are in each state, every state named (for the metrics)."""
    rows = Reservation.objects.order_by().values("state").annotate(n=Count("id"))
    counts = {row["state"]: row["n"] for row in rows}
    return {state: counts.get(state, 0) for state in Reservation.State.values}
