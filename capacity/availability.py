"""The availability calendar: for 8 weeks day by day, or for a week hour by hour, the largest
block bookable in one fabric (a block never spans clusters, so free nodes are not summed)."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
from django.conf import settings
from django.utils import timezone

from . import selectors
from .models import Cluster, GpuModel, Node, Region

HOUR = timedelta(hours=1)
# Five shades from sold out to wide open.
SHADES = ["#fee2e2", "#fde68a", "#d9f99d", "#86efac", "#22c55e"]
SHADE_NAMES = ["none", "few", "some", "many", "all"]


@dataclass(frozen=True)
class Cell:
    start: datetime
    free: int  # the largest block free in one fabric (for a day: at its busiest hour)
    capacity: int  # the nodes in service of the largest fabric: the most one block can have
    node_count: int = 1  # the block size asked for

    @property
    def fits(self) -> bool:
        return self.free >= self.node_count

    @property
    def level(self) -> int:
        """0 (none free) to 4 (the whole largest fabric free)."""
        if self.capacity == 0 or self.free == 0:
            return 0
        if self.free >= self.capacity:
            return 4
        # Partly booked: few (under a third free), some (under two thirds), many. Only a
        # fully free fabric is "all", so the first booking shows.
        return 1 + min(2, int(3 * self.free / self.capacity))

    @property
    def shade(self) -> str:
        return SHADES[self.level]

    @property
    def shade_name(self) -> str:
        return SHADE_NAMES[self.level]


@dataclass(frozen=True)
class Calendar:
    gpu_model: GpuModel
    region: Region
    node_count: int
    total_nodes: int  # in service, all fabrics together
    largest_fabric: int  # nodes in service in the largest fabric
    fabrics: int
    zoom: str  # "day" or "hour"
    rows: list[list[Cell]]
    first: date

    @property
    def previous_week(self) -> date | None:
        week = self.first - timedelta(days=7)
        return week if week >= timezone.now().date() else None

    @property
    def next_week(self) -> date | None:
        week = self.first + timedelta(days=7)
        latest = timezone.now().date() + settings.CAPACITY_MAX_LEAD - timedelta(days=6)
        return week if week <= latest else None


def largest_block_per_hour(occupancy: selectors.Occupancy) -> np.ndarray:
    """For each hour: the most nodes free in any one cluster (0 where a pool has none)."""
    hours = occupancy.busy.shape[1]
    largest = np.zeros(hours, dtype=np.int64)
    for cluster in np.unique(occupancy.cluster_ids):
        free = (~occupancy.busy[occupancy.cluster_ids == cluster]).sum(axis=0)
        largest = np.maximum(largest, free)
    return largest


def _fabric_sizes(clusters: list[Cluster]) -> list[int]:
    counts = dict.fromkeys((c.pk for c in clusters), 0)
    nodes = Node.objects.filter(cluster__in=clusters, status=Node.Status.AVAILABLE)
    for cluster_id in nodes.values_list("cluster_id", flat=True):
        counts[cluster_id] += 1
    return list(counts.values())


def _calendar(
    gpu_model: GpuModel, region: Region, node_count: int, first: datetime, hours: int
) -> tuple[np.ndarray, list[int]]:
    clusters = selectors.pool_clusters(gpu_model, region)
    sizes = _fabric_sizes(clusters)
    return largest_block_per_hour(selectors.occupancy(clusters, first, hours)), sizes


def by_day(
    gpu_model: GpuModel, region: Region, node_count: int = 1, now: datetime | None = None
) -> Calendar:
    """8 weeks of days; a day shows the largest block free in one fabric at its busiest hour."""
    now = now or timezone.now()
    first = now.replace(hour=0, minute=0, second=0, microsecond=0)
    weeks = settings.CAPACITY_MAX_LEAD.days // 7
    largest, sizes = _calendar(gpu_model, region, node_count, first, weeks * 7 * 24)
    capacity = max(sizes, default=0)
    rows = []
    for week in range(weeks):
        row = []
        for day in range(7):
            index = (week * 7 + day) * 24
            worst = int(largest[index : index + 24].min())
            row.append(Cell(first + timedelta(days=week * 7 + day), worst, capacity, node_count))
        rows.append(row)
    return Calendar(
        gpu_model, region, node_count, sum(sizes), capacity, len(sizes), "day", rows, first.date()
    )


def by_hour(
    gpu_model: GpuModel,
    region: Region,
    week_of: date,
    node_count: int = 1,
    now: datetime | None = None,
) -> Calendar:
    """Seven days from `week_of` (kept within the booking horizon), hour by hour."""
    now = now or timezone.now()
    today = now.date()
    horizon_end = today + settings.CAPACITY_MAX_LEAD - timedelta(days=6)
    week_of = min(max(week_of, today), horizon_end)
    first = datetime(week_of.year, week_of.month, week_of.day, tzinfo=UTC)
    largest, sizes = _calendar(gpu_model, region, node_count, first, 7 * 24)
    capacity = max(sizes, default=0)
    rows = [
        [
            Cell(first + timedelta(days=d, hours=h), int(largest[d * 24 + h]), capacity, node_count)
            for h in range(24)
        ]
        for d in range(7)
    ]
    return Calendar(
        gpu_model, region, node_count, sum(sizes), capacity, len(sizes), "hour", rows, week_of
    )
