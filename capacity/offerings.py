"""Offerings search: what a customer can book for a GPU model, region, size and window.

The exact window when it is free; otherwise the nearest other start times, the same window in
other regions, and the largest block that fits. Every offering is priced for the organization.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from accounts.models import Organization

from . import pricing, selectors
from .models import Cluster, DurationDiscount, GpuModel, ListPrice, Region
from .windows import HOUR, Window, ceil_hour


@dataclass(frozen=True)
class Offering:
    kind: str  # "exact", "other_time", "other_region" or "fewer_nodes"
    gpu_model: GpuModel
    region: Region
    node_count: int
    window: Window
    available_nodes: int
    quote: pricing.Quote

    @property
    def starts_at(self) -> datetime:
        return self.window.starts_at

    @property
    def ends_at(self) -> datetime:
        return self.window.ends_at

    @property
    def duration_hours(self) -> int:
        return self.window.hours

    @property
    def starts_on_payment(self) -> bool:
        return self.window.starts_on_payment

    @property
    def kind_label(self) -> str:
        return KIND_LABELS[self.kind]


KIND_LABELS = {
    "exact": "Available as asked",
    "other_time": "Another start time",
    "other_region": "Another region",
    "fewer_nodes": "Fewer nodes",
}


class _Pricer:
    """Prices many offerings with the catalog read once."""

    def __init__(self, organization: Organization | None, gpu_model: GpuModel) -> None:
        self.organization = organization
        self.gpu_model = gpu_model
        self.prices = {p.region_id: p for p in ListPrice.objects.filter(gpu_model=gpu_model)}
        self.discounts = list(DurationDiscount.objects.all())
        self.rates = pricing.negotiated_rates(organization, gpu_model)

    def offering(
        self, kind: str, region: Region, node_count: int, window: Window, available: int
    ) -> Offering | None:
        list_price = self.prices.get(region.pk)
        if list_price is None:
            return None
        quote = pricing.quote(
            organization=self.organization,
            gpu_model=self.gpu_model,
            region=region,
            node_count=node_count,
            starts_at=window.starts_at,
            ends_at=window.ends_at,
            list_price=list_price,
            discounts=self.discounts,
            rates=self.rates,
        )
        return Offering(kind, self.gpu_model, region, node_count, window, available, quote)


def _best_per_region(clusters: list[Cluster], free: dict[int, int]) -> dict[Region, int]:
    best: dict[Region, int] = {}
    for cluster in clusters:
        best[cluster.region] = max(best.get(cluster.region, 0), free.get(cluster.pk, 0))
    return best


def search(
    *,
    organization: Organization | None,
    gpu_model: GpuModel,
    region: Region | None,
    node_count: int,
    window: Window,
    now: datetime | None = None,
) -> list[Offering]:
    now = now or timezone.now()
    pricer = _Pricer(organization, gpu_model)
    clusters = selectors.pool_clusters(gpu_model)
    asked_clusters = [c for c in clusters if region is None or c.region == region]
    # A start-now block is held past its own end while it is paid for: that has to be free too.
    free = selectors.free_nodes_by_cluster(
        [c.pk for c in asked_clusters], window.starts_at, window.held_until
    )
    best = _best_per_region(asked_clusters, free)
    asked = [region] if region is not None else sorted(best, key=lambda r: r.code)

    exact = [
        pricer.offering("exact", r, node_count, window, best[r])
        for r in asked
        if best.get(r, 0) >= node_count
    ]
    if any(exact):
        return sorted(filter(None, exact), key=lambda o: o.quote.total)

    offerings: list[Offering | None] = []
    offerings += _other_start_times(pricer, asked_clusters, node_count, window, now)
    if region is not None:
        # Only now, with the asked region full, do the other regions matter.
        others = [c for c in clusters if c.region != region]
        other_free = selectors.free_nodes_by_cluster(
            [c.pk for c in others], window.starts_at, window.held_until
        )
        best.update(_best_per_region(others, other_free))
        offerings += [
            pricer.offering("other_region", r, node_count, window, n)
            for r, n in sorted(best.items(), key=lambda item: item[0].code)
            if r != region and n >= node_count
        ]
    most = max((best.get(r, 0) for r in asked), default=0)
    if 0 < most < node_count:
        where = max(asked, key=lambda r: best.get(r, 0))
        offerings.append(pricer.offering("fewer_nodes", where, most, window, most))
    return [o for o in offerings if o is not None]


def _other_start_times(
    pricer: _Pricer, clusters: list[Cluster], node_count: int, window: Window, now: datetime
) -> list[Offering | None]:
    """The nearest hourly starts, before or after the asked one, where the block fits."""
    if not clusters:
        return []
    span = settings.CAPACITY_ALTERNATIVE_SPAN
    earliest = ceil_hour(now + timedelta(minutes=1))
    latest = now + settings.CAPACITY_MAX_LEAD
    asked = ceil_hour(window.starts_at)
    first = max(earliest, asked - span)
    last = min(latest, asked + span)
    if last < first:
        return []
    starts = int((last - first) / HOUR) + 1
    occupancy = selectors.occupancy(clusters, first, starts + window.hours - 1)
    counts = occupancy.free_counts(window.hours)
    fits: dict[int, tuple[int, Cluster]] = {}  # start offset -> (free nodes, best cluster)
    for cluster in clusters:
        free = counts.get(cluster.pk)
        if free is None:
            continue
        for offset in (free >= node_count).nonzero()[0].tolist():
            if offset not in fits or free[offset] > fits[offset][0]:
                fits[offset] = (int(free[offset]), cluster)
    asked_offset = int((asked - first) / HOUR)
    candidates = [o for o in fits if o != asked_offset or window.starts_on_payment]
    result = []
    for offset in nearest_offsets(candidates, asked_offset, settings.CAPACITY_ALTERNATIVES):
        start = first + offset * HOUR
        available, cluster = fits[offset]
        result.append(
            pricer.offering(
                "other_time",
                cluster.region,
                node_count,
                Window(start, start + window.hours * HOUR),
                available,
            )
        )
    return result


def nearest_offsets(candidates: list[int], asked: int, limit: int) -> list[int]:
    """The `limit` candidates nearest to `asked` (the earlier on a tie), in time order, with the
    nearest earlier and the nearest later one always among them when there are such: a
    customer who can move either way sees both directions."""
    by_distance = sorted(candidates, key=lambda o: (abs(o - asked), o))
    chosen = by_distance[:limit]
    for side in ([o for o in by_distance if o < asked], [o for o in by_distance if o > asked]):
        if limit >= 2 and side and side[0] not in chosen:
            # Give up the farthest pick of the other side for the nearest of this one.
            others = [o for o in chosen if (o < asked) != (side[0] < asked)]
            chosen.remove(others[-1])
            chosen.append(side[0])
    return sorted(chosen)
