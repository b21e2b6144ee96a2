"""The availability calendar counts what one block can get: the free nodes of one fabric."""

from datetime import UTC, datetime, timedelta

import numpy as np

from capacity import availability, selectors
from capacity.models import Cluster, Node

from .conftest import NEXT_HOUR, NOW, hours
from .test_reservations import reserve


def occupancy(cluster_ids: list[int], busy: list[list[bool]]) -> selectors.Occupancy:
    return selectors.Occupancy(
        start=NEXT_HOUR,
        node_ids=np.arange(len(cluster_ids)),
        cluster_ids=np.array(cluster_ids),
        busy=np.array(busy, dtype=bool),
    )


def test_the_largest_block_is_the_best_fabric_not_the_sum():
    # Two fabrics of 3 nodes: hour 0 all free (3, not 6); hour 1 one node busy in each (2);
    # hour 2 the first fabric full (the second's 3).
    busy = [[False, True, True], [False, False, True], [False, False, True]]
    busy += [[False, True, False], [False, False, False], [False, False, False]]
    largest = availability.largest_block_per_hour(occupancy([1, 1, 1, 2, 2, 2], busy))
    assert largest.tolist() == [3, 2, 3]


def test_a_pool_without_nodes_has_no_block():
    empty = selectors.Occupancy(
        start=NEXT_HOUR,
        node_ids=np.array([], dtype=np.int64),
        cluster_ids=np.array([], dtype=np.int64),
        busy=np.zeros((0, 4), dtype=bool),
    )
    assert availability.largest_block_per_hour(empty).tolist() == [0, 0, 0, 0]


def _fabric(code, catalog, nodes):
    cluster = Cluster.objects.create(code=code, region=catalog.west, gpu_model=catalog.h100)
    Node.objects.bulk_create(Node(cluster=cluster, hostname=f"{code}-{i}") for i in range(nodes))
    return cluster


def test_two_fabrics_of_16_free_show_16_not_32(catalog, organization, owner):
    Cluster.objects.filter(pk=catalog.west_a.pk).update(is_active=False)
    _fabric("west-b", catalog, 16)
    _fabric("west-c", catalog, 16)
    calendar = availability.by_day(catalog.h100, catalog.west, node_count=16)
    assert (calendar.total_nodes, calendar.largest_fabric, calendar.fabrics) == (32, 16, 2)
    assert {cell.free for row in calendar.rows for cell in row} == {16}
    assert all(cell.fits for row in calendar.rows for cell in row)
    # 4 nodes taken in one fabric for two hours of day 2: the other still has all 16.
    reserve(organization, owner, catalog, nodes=4, start=NEXT_HOUR + hours(24), length=2,
            region=catalog.west)  # fmt: skip
    hourly = availability.by_hour(catalog.h100, catalog.west, NOW.date(), node_count=16)
    assert [cell.free for cell in hourly.rows[1][9:13]] == [16, 16, 16, 16]
    # 13 more for an hour fit only the untouched fabric: at 10:00 on day 2 one fabric has 12
    # free and the other 3, so the largest block is 12, not the 15 free.
    reserve(organization, owner, catalog, nodes=13, start=NEXT_HOUR + hours(24), length=1,
            region=catalog.west)  # fmt: skip
    hourly = availability.by_hour(catalog.h100, catalog.west, NOW.date(), node_count=16)
    assert [(c.free, c.fits) for c in hourly.rows[1][9:12]] == [
        (16, True),
        (12, False),
        (16, True),
    ]
    daily = availability.by_day(catalog.h100, catalog.west, node_count=16)
    assert [cell.free for cell in daily.rows[0][:3]] == [16, 12, 16]  # the day's worst hour


def test_calendar_by_day_shows_the_largest_block_of_each_day(catalog, organization, owner):
    # 3 nodes from 10:00 today for 24 h (best fit: east-a, 4 nodes), 8 nodes on day 3 for 2 h
    # (east-b). A day shows its busiest hour's largest block in one fabric.
    reserve(organization, owner, catalog, nodes=3, start=NEXT_HOUR, length=24)
    reserve(organization, owner, catalog, nodes=8, start=NEXT_HOUR + hours(48), length=2)
    calendar = availability.by_day(catalog.h100, catalog.east)
    days = [cell.free for row in calendar.rows for cell in row]
    assert (calendar.total_nodes, calendar.largest_fabric, calendar.fabrics) == (12, 8, 2)
    assert len(days) == 56
    assert days[:4] == [8, 8, 4, 8]
    assert set(days[4:]) == {8}
    assert calendar.rows[0][0].start == datetime(2026, 12, 1, tzinfo=UTC)


def test_calendar_by_hour_zooms_into_a_week_and_marks_what_is_too_small(
    catalog, organization, owner
):
    reserve(organization, owner, catalog, nodes=8, start=NEXT_HOUR, length=2)
    calendar = availability.by_hour(catalog.h100, catalog.east, NOW.date(), node_count=5)
    first_day = calendar.rows[0][9:13]
    assert [cell.free for cell in first_day] == [8, 4, 4, 8]
    assert [cell.fits for cell in first_day] == [True, False, False, True]
    assert len(calendar.rows) == 7
    assert {len(row) for row in calendar.rows} == {24}
    assert calendar.previous_week is None
    assert calendar.next_week == NOW.date() + timedelta(days=7)
