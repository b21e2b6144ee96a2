"""The availability calendar: free nodes per day for 8 weeks, or per hour for a week."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from . import selectors
from .models import GpuModel, Node, Region

HOUR = timedelta(hours=1)
# Five shades from sold out to wide open.
SHADES = ["#fee2e2", "#fde68a", "#d9f99d", "#86efac", "#22c55e"]


@dataclass(frozen=True)
class Cell:
    start: datetime
    free: int
    total: int

    @property
    def shade(self) -> str:
        if self.total == 0 or self.free == 0:
            return SHADES[0]
        if self.free >= self.total:
            return SHADES[4]
        # Partly booked: few (under a third free), some (under two thirds), many. Only a
        # fully free hour is "all", so the first booking shows.
        return SHADES[1 + min(2, int(3 * self.free / self.total))]

    @property
    def ink(self) -> str:
        return "#7f1d1d" if self.free == 0 else "#14532d"


@dataclass(frozen=True)
class Calendar:
    gpu_model: GpuModel
    region: Region
    total_nodes: int
    zoom: str  # "day" or "hour"
    rows: list[list[Cell]]
    first: date

    @property
    def previous_week(self) -> date:
        return self.first - timedelta(days=7)

    @property
    def next_week(self) -> date:
        return self.first + timedelta(days=7)


def _total_nodes(clusters: list) -> int:
    return Node.objects.filter(cluster__in=clusters, status=Node.Status.AVAILABLE).count()


def by_day(gpu_model: GpuModel, region: Region, now: datetime | None = None) -> Calendar:
    """8 weeks of days; a day shows the fewest nodes free in any of its hours."""
    now = now or timezone.now()
    first = now.replace(hour=0, minute=0, second=0, microsecond=0)
    weeks = settings.CAPACITY_MAX_LEAD.days // 7
    clusters = selectors.pool_clusters(gpu_model, region)
    total = _total_nodes(clusters)
    free = selectors.occupancy(clusters, first, weeks * 7 * 24).free_per_hour()
    rows = []
    for week in range(weeks):
        row = []
        for day in range(7):
            index = (week * 7 + day) * 24
            hours = free[index : index + 24]
            row.append(
                Cell(
                    first + timedelta(days=week * 7 + day),
                    int(hours.min()) if len(hours) else total,
                    total,
                )
            )
        rows.append(row)
    return Calendar(gpu_model, region, total, "day", rows, first.date())


def by_hour(
    gpu_model: GpuModel, region: Region, week_of: date, now: datetime | None = None
) -> Calendar:
    """Seven days from `week_of` (kept within the booking horizon), hour by hour."""
    now = now or timezone.now()
    today = now.date()
    horizon_end = today + settings.CAPACITY_MAX_LEAD - timedelta(days=6)
    week_of = min(max(week_of, today), horizon_end)
    first = datetime(week_of.year, week_of.month, week_of.day, tzinfo=UTC)
    clusters = selectors.pool_clusters(gpu_model, region)
    total = _total_nodes(clusters)
    free = selectors.occupancy(clusters, first, 7 * 24).free_per_hour()
    rows = [
        [Cell(first + timedelta(days=d, hours=h), int(free[d * 24 + h]), total) for h in range(24)]
        for d in range(7)
    ]
    return Calendar(gpu_model, region, total, "hour", rows, week_of)
