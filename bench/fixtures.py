"""Catalog, inventory and customers for the benchmarks, written in bulk.

The catalog reuses the demo's GPU models, regions, prices and discounts (capacity/demo.py) so
the benchmark prices offerings the way the product does; the inventory is sized by the caller.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from accounts.models import Membership, Organization, User
from accounts.permissions import Role
from capacity import demo
from capacity.models import Allocation, Cluster, DurationDiscount, GpuModel, ListPrice, Node, Region

BATCH = 2000  # rows per INSERT; Django lowers it further where SQLite needs that


@dataclass(frozen=True)
class Pool:
    """One GPU model in one region: what a search or a reservation draws nodes from."""

    gpu_model: GpuModel
    region: Region
    price_per_gpu_hour: Decimal
    clusters: list[Cluster]


def load_catalog(*, gpu_models: int, regions: int) -> tuple[list[GpuModel], list[Region]]:
    DurationDiscount.objects.bulk_create(
        DurationDiscount(min_hours=hours, percent=percent, label=label)
        for hours, percent, label in demo.DISCOUNTS
    )
    models = GpuModel.objects.bulk_create(
        GpuModel(slug=slug, name=name, memory_gb=memory, description=text, sort_order=order)
        for order, (slug, name, memory, text, _) in enumerate(demo.GPU_MODELS[:gpu_models])
    )
    places = Region.objects.bulk_create(
        Region(code=code, name=name, location=location)
        for code, name, location in demo.REGIONS[:regions]
    )
    return models, places


def _list_price(gpu_model: GpuModel, region: Region) -> Decimal:
    base = next(price for slug, *_, price in demo.GPU_MODELS if slug == gpu_model.slug)
    return (base * demo.REGION_PRICE_FACTOR[region.code]).quantize(Decimal("0.01"))


def load_pools(
    gpu_models: list[GpuModel], regions: list[Region], *, clusters_per_pool: int
) -> list[Pool]:
    """Price every GPU model in every region and give each pool its clusters."""
    ListPrice.objects.bulk_create(
        ListPrice(gpu_model=g, region=r, price_per_gpu_hour=_list_price(g, r))
        for g in gpu_models
        for r in regions
    )
    pools = []
    for gpu_model in gpu_models:
        for region in regions:
            clusters = Cluster.objects.bulk_create(
                Cluster(
                    code=f"{region.code}-{gpu_model.slug}-{i}", region=region, gpu_model=gpu_model
                )
                for i in range(1, clusters_per_pool + 1)
            )
            pools.append(Pool(gpu_model, region, _list_price(gpu_model, region), clusters))
    return pools


def load_nodes(clusters: list[Cluster], count: int) -> dict[int, list[int]]:
    """Spread `count` 8-GPU nodes round-robin over the clusters; node ids by cluster id."""
    nodes = Node.objects.bulk_create(
        (
            Node(
                cluster=clusters[i % len(clusters)],
                hostname=f"{clusters[i % len(clusters)].code}-n{i // len(clusters):05d}",
                gpu_count=8,
            )
            for i in range(count)
        ),
        batch_size=BATCH,
    )
    by_cluster: dict[int, list[int]] = {c.pk: [] for c in clusters}
    for node in nodes:
        by_cluster[node.cluster_id].append(node.pk)
    return by_cluster


def verified_owner(slug: str) -> tuple[Organization, User]:
    """An active organization on card terms and its owner, e-mail verified: allowed to reserve."""
    organization = Organization.objects.create(
        name=slug.replace("-", " ").title(),
        slug=slug,
        country="DE",
        billing_email=f"billing@{slug}.example",
    )
    user = User.objects.create_user(
        f"owner@{slug}.example", password=None, email_verified_at=timezone.now()
    )
    Membership.objects.create(user=user, organization=organization, role=Role.OWNER)
    return organization, user


def overlapping_live_pairs() -> int:
    """Pairs of live allocations of one node whose periods overlap: an oversold node each."""
    table = connection.ops.quote_name(Allocation._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM {table} a JOIN {table} b"  # noqa: S608 (a constant table name)
            " ON b.node_id = a.node_id AND b.id > a.id"
            " AND b.starts_at < a.ends_at AND a.starts_at < b.ends_at"
            " WHERE a.released_at IS NULL AND b.released_at IS NULL"
        )
        return int(cursor.fetchone()[0])
