""" "Other start times": every start suggested for a sold-out window is one the reservation
service takes as shown, and they are the nearest such starts on each side of the asked one."""

import contextlib
from datetime import timedelta

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from capacity import offerings, selectors, services
from capacity.offerings import nearest_offsets
from capacity.windows import Window, ceil_hour, window_for

from .conftest import NEXT_HOUR, NOW, hours
from .test_reservations import reserve

SPAN_HOURS = 8
ALTERNATIVES = 3


@pytest.mark.parametrize(
    ("candidates", "asked", "expected"),
    [
        ([1, 2, 3, 4], 10, [2, 3, 4]),  # all earlier: the three nearest
        ([1, 2, 3, 4, 20], 10, [3, 4, 20]),  # the one later start is kept though farther
        ([11, 12, 13, 14], 10, [11, 12, 13]),
        ([2, 11, 12, 13], 10, [2, 11, 12]),  # the one earlier start is kept though farther
        ([8, 9, 16, 17], 10, [8, 9, 16]),  # the nearest later start joins the two earlier
        ([9, 11], 10, [9, 11]),
        ([10, 11, 12, 13], 10, [10, 11, 12]),  # starting now counts as a later start
        ([], 10, []),
    ],
)
def test_nearest_offsets_take_both_sides(candidates, asked, expected):
    assert nearest_offsets(candidates, asked, 3) == expected


def test_a_start_inside_the_sold_out_span_is_never_offered(catalog, organization, owner):
    # us-east is full from +2 h to +12 h; the 2 h before it are too short for 3 h, so the
    # nearest starts that fit are the first three hours after it.
    reserve(organization, owner, catalog, nodes=8, start=NEXT_HOUR + hours(2), length=10)
    reserve(organization, owner, catalog, nodes=4, start=NEXT_HOUR + hours(2), length=10)
    start = NEXT_HOUR + hours(5)
    results = offerings.search(
        organization=organization, gpu_model=catalog.h100, region=catalog.east, node_count=4,
        window=Window(start, start + hours(3)),
    )  # fmt: skip
    assert [(o.starts_at, o.available_nodes) for o in results if o.kind == "other_time"] == [
        (NEXT_HOUR + hours(12), 8),
        (NEXT_HOUR + hours(13), 8),
        (NEXT_HOUR + hours(14), 8),
    ]


class _RolledBack(Exception):
    pass


def reservable(organization, owner, catalog, region, nodes, window) -> bool:
    """Whether the reservation service takes this block; nothing it writes is kept."""
    try:
        with transaction.atomic():
            try:
                services.reservation_create(
                    organization=organization, user=owner, gpu_model=catalog.h100,
                    region=region, node_count=nodes, window=window,
                )  # fmt: skip
            except services.SoldOut:
                return False
            raise _RolledBack
    except _RolledBack:
        return True


def fits(catalog, region, nodes, window) -> bool:
    """The reservation service's own choice of cluster and nodes, read without writing."""
    clusters = selectors.pool_clusters(catalog.h100, region)
    return services._allocate(clusters, nodes, window) is not None


bookings = st.lists(
    st.tuples(
        st.sampled_from(["east", "west"]),
        st.integers(1, 8),  # nodes
        st.one_of(st.none(), st.integers(0, 24)),  # hours from the next hour; None: start now
        st.integers(1, 10),  # length
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture
def short_span(settings):
    settings.CAPACITY_ALTERNATIVE_SPAN = timedelta(hours=SPAN_HOURS)
    settings.CAPACITY_ALTERNATIVES = ALTERNATIVES


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    booked=bookings,
    region_name=st.sampled_from(["east", "west", None]),
    nodes=st.integers(1, 8),
    asked=st.one_of(st.none(), st.integers(0, 20)),
    length=st.integers(1, 6),
)
def test_suggested_starts_are_reservable_and_the_nearest_on_each_side(
    catalog, organization, owner, short_span, booked, region_name, nodes, asked, length
):
    with transaction.atomic():
        for where, count, offset, hours_long in booked:
            start = None if offset is None else NEXT_HOUR + hours(offset)
            window = window_for(starts_at=start, duration_hours=hours_long)
            with contextlib.suppress(services.SoldOut):  # some bookings find the pool full
                services.reservation_create(
                    organization=organization, user=owner, gpu_model=catalog.h100,
                    region=getattr(catalog, where), node_count=count, window=window,
                )  # fmt: skip
        region = getattr(catalog, region_name) if region_name else None
        window = window_for(
            starts_at=None if asked is None else NEXT_HOUR + hours(asked), duration_hours=length
        )
        results = offerings.search(
            organization=organization, gpu_model=catalog.h100, region=region,
            node_count=nodes, window=window,
        )  # fmt: skip
        suggested = [o for o in results if o.kind == "other_time"]
        for offering in suggested:
            assert (offering.node_count, offering.duration_hours) == (nodes, length)
            assert region is None or offering.region == region
            assert not offering.starts_on_payment
            assert reservable(organization, owner, catalog, offering.region, nodes, offering.window)
        if any(o.kind == "exact" for o in results):
            assert suggested == []
        else:
            # Every hourly start in reach, checked one by one with the reservation's allocator.
            asked_at = ceil_hour(window.starts_at)
            first = max(ceil_hour(NOW + timedelta(minutes=1)), asked_at - hours(SPAN_HOURS))
            sweep = [first + hours(h) for h in range(2 * SPAN_HOURS + 1)]
            fitting = [
                start
                for start in sweep
                if start <= asked_at + hours(SPAN_HOURS)
                and (start != asked_at or window.starts_on_payment)
                and fits(catalog, region, nodes, Window(start, start + hours(length)))
            ]
            earlier = [s for s in fitting if s < asked_at][::-1]
            later = [s for s in fitting if s >= asked_at]
            starts = [o.starts_at for o in suggested]
            shown_earlier = [s for s in starts if s < asked_at][::-1]
            shown_later = [s for s in starts if s >= asked_at]
            assert len(starts) == min(ALTERNATIVES, len(fitting))
            assert shown_earlier == earlier[: len(shown_earlier)]
            assert shown_later == later[: len(shown_later)]
            assert bool(shown_earlier) == bool(earlier)
            assert bool(shown_later) == bool(later)
        transaction.set_rollback(True)
