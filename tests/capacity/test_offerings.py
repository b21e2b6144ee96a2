from decimal import Decimal

from capacity import availability, lifecycle, offerings
from capacity.models import Node, Reservation
from capacity.windows import Window

from .conftest import NEXT_HOUR, NOW, hours
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


def test_calendar_by_day_shows_the_fewest_free_nodes_of_each_day(catalog, organization, owner):
    # 3 nodes from 10:00 today for 24 h, 8 nodes on day 3 for 2 h.
    reserve(organization, owner, catalog, nodes=3, start=NEXT_HOUR, length=24)
    reserve(organization, owner, catalog, nodes=8, start=NEXT_HOUR + hours(48), length=2)
    calendar = availability.by_day(catalog.h100, catalog.east)
    days = [cell.free for row in calendar.rows for cell in row]
    assert calendar.total_nodes == 12
    assert len(days) == 56
    assert days[:4] == [9, 9, 4, 12]
    assert set(days[4:]) == {12}
    assert calendar.rows[0][0].start == NOW.replace(hour=0, minute=0)


def test_calendar_by_hour_zooms_into_a_week(catalog, organization, owner):
    reserve(organization, owner, catalog, nodes=3, start=NEXT_HOUR, length=2)
    calendar = availability.by_hour(catalog.h100, catalog.east, NOW.date())
    first_day = [cell.free for cell in calendar.rows[0]]
    assert first_day[9:13] == [12, 9, 9, 12]
    assert len(calendar.rows) == 7
    assert {len(row) for row in calendar.rows} == {24}
