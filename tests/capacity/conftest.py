from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from accounts.models import Organization, User
from capacity.models import Cluster, DurationDiscount, GpuModel, ListPrice, Node, Region

# Every capacity test runs at this instant unless it travels elsewhere.
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
NEXT_HOUR = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@dataclass
class Catalog:
    h100: GpuModel
    east: Region
    west: Region
    east_a: Cluster
    east_b: Cluster
    west_a: Cluster


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def _cluster(code: str, region: Region, gpu: GpuModel, nodes: int) -> Cluster:
    cluster = Cluster.objects.create(code=code, region=region, gpu_model=gpu)
    Node.objects.bulk_create(
        Node(cluster=cluster, hostname=f"{code}-n{i:02d}") for i in range(nodes)
    )
    return cluster


@pytest.fixture
def catalog(db: None) -> Catalog:
    """H100 at $2.00 in us-east (clusters of 4 and 8 nodes), $1.50 in us-west (4 nodes)."""
    h100 = GpuModel.objects.create(slug="h100", name="H100", memory_gb=80)
    east = Region.objects.create(code="us-east", name="US East")
    west = Region.objects.create(code="us-west", name="US West")
    ListPrice.objects.create(gpu_model=h100, region=east, price_per_gpu_hour=Decimal("2.00"))
    ListPrice.objects.create(gpu_model=h100, region=west, price_per_gpu_hour=Decimal("1.50"))
    DurationDiscount.objects.create(min_hours=168, percent=Decimal("5"), label="7+ days")
    DurationDiscount.objects.create(min_hours=720, percent=Decimal("12"), label="30+ days")
    return Catalog(
        h100=h100,
        east=east,
        west=west,
        east_a=_cluster("east-a", east, h100, 4),
        east_b=_cluster("east-b", east, h100, 8),
        west_a=_cluster("west-a", west, h100, 4),
    )


@pytest.fixture
def customer(organization: Organization, owner: User) -> tuple[Organization, User]:
    return organization, owner


def hours(n: int) -> timedelta:
    return timedelta(hours=n)
