from decimal import Decimal

from capacity import lifecycle, offerings
from capacity.models import Node, Reservation
from capacity.windows import Window

from .conftest import NEXT_HOUR, hours
from .test_reservations import reserve


def search(catalog, org, nodes, region="east", start=NEXT_HOUR, length=24):
    return offerings.search(
        organization=org, gpu_model=catalog.h100,
        region=getattr(catalog, region) if region else None,
        node_count=nodes, window=Window(start, start + hours(length)),
    )  # fmt: skip


def summary(results):
    return [(o.kind, o.region.code, o.node_count, o.starts_at, o.quote.total) for o in results]


def test_the_exact_window_when_it_is_free(catalog, organization):
    assert summary(search(catalog, organization, 8)) == [
        ("exact", "us-east", 8, NEXT_HOUR, Decimal("3072.00"))
    ]


def test_any_region_lists_every_region_that_fits_cheapest_first(catalog, organization):
    assert summary(search(catalog, organization, 4, region=None)) == [
        ("exact", "us-west", 4, NEXT_HOUR, Decimal("1152.00")),
        ("exact", "us-east", 4, NEXT_HOUR, Decimal("1536.00")),
    ]


def test_a_block_larger_than_any_cluster_offers_the_largest_that_fits(catalog, organization):
    # 10 nodes never fit one fabric here: the biggest cluster has 8.
    assert summary(search(catalog, organization, 10)) == [
        ("fewer_nodes", "us-east", 8, NEXT_HOUR, Decimal("3072.00"))
    ]


def test_sold_out_offers_nearest_times_other_regions_and_fewer_nodes(catalog, organization, owner):
    reserve(organization, owner, catalog, nodes=8, start=NEXT_HOUR + hours(2), length=22)
    reserve(organization, owner, catalog, nodes=2, start=NEXT_HOUR, length=30)
    results = search(catalog, organization, 4, start=NEXT_HOUR + hours(4), length=4)
    # east-b (8 nodes) is busy from +2 h to +24 h, east-a keeps 2 of its 4 nodes free: 4 nodes
    # for 4 h fit in us-east from +24 h on (before +2 h is too short), or in us-west now.
    assert summary(results) == [
        ("other_time", "us-east", 4, NEXT_HOUR + hours(24), Decimal("256.00")),
        ("other_time", "us-east", 4, NEXT_HOUR + hours(25), Decimal("256.00")),
        ("other_time", "us-east", 4, NEXT_HOUR + hours(26), Decimal("256.00")),
        ("other_region", "us-west", 4, NEXT_HOUR + hours(4), Decimal("192.00")),
        ("fewer_nodes", "us-east", 2, NEXT_HOUR + hours(4), Decimal("128.00")),
    ]


def test_nodes_in_maintenance_are_not_offered(catalog, organization):
    Node.objects.filter(cluster=catalog.east_b).update(status=Node.Status.MAINTENANCE)
    assert summary(search(catalog, organization, 4)) == [
        ("exact", "us-east", 4, NEXT_HOUR, Decimal("1536.00"))
    ]
    assert search(catalog, organization, 5)[-1].kind == "fewer_nodes"


def test_released_allocations_are_free_again(catalog, organization, owner):
    held = reserve(organization, owner, catalog, nodes=8)
    assert search(catalog, organization, 8)[0].kind != "exact"
    lifecycle.reservation_transition(reservation=held, to=Reservation.State.CANCELED, actor=owner)
    assert search(catalog, organization, 8)[0].kind == "exact"
