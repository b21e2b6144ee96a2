"""The cluster node timeline: the pure layout, its selector and the admin page that draws it."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from capacity import lifecycle, selectors, services, timeline
from capacity.models import Node, Reservation
from capacity.timeline import Booking, Lane
from capacity.windows import Window
from tests.backoffice.conftest import make_staff, verified_client

from .conftest import NEXT_HOUR, NOW, hours

START = datetime(2026, 11, 30, tzinfo=UTC)
END = START + timedelta(days=10)  # 10 days over 1000 px (80 to 1080): 100 px a day
LANES = [
    Lane(1, "n-01", "available"),
    Lane(2, "n-02", "maintenance", "Fans"),
    Lane(3, "n-03", "available"),
]


def booking(node_id: int, start: datetime, end: datetime, **kwargs) -> Booking:
    fields = {"public_id": "rsv_aaaaaaaaaaaaaa", "organization": "Acme", "state": "active"}
    return Booking(node_id=node_id, starts_at=start, ends_at=end, **{**fields, **kwargs})


def chart(bookings: list[Booking], now: datetime = START + timedelta(days=1, hours=12)):
    return timeline.layout(
        lanes=LANES, bookings=bookings, start=START, end=END, now=now, width=1096
    )


def test_rows_are_the_nodes_in_order_with_their_status():
    rows = chart([]).rows
    assert [(r.y, r.label, r.status, r.status_reason, r.shaded) for r in rows] == [
        (40, "n-01", "available", "", False),
        (64, "n-02", "maintenance", "Fans", True),
        (88, "n-03", "available", "", False),
    ]
    assert (chart([]).height, chart([]).plot_width) == (40 + 3 * 24 + 8, 1000)


def test_the_label_column_fits_the_names_without_the_clusters_prefix():
    lanes = [Lane(1, "east-a-n00", "available"), Lane(2, "east-a-n100", "available")]
    plain = timeline.layout(lanes=lanes, bookings=[], start=START, end=END, now=START)
    short = timeline.layout(
        lanes=lanes, bookings=[], start=START, end=END, now=START, name_prefix="east-a-"
    )
    assert [(r.hostname, r.label) for r in short.rows] == [
        ("east-a-n00", "n00"),
        ("east-a-n100", "n100"),
    ]
    assert (plain.plot_left, short.plot_left) == (103, 80)  # 11 characters: 79.2 + 24 px


def test_bars_sit_on_their_node_at_their_time_coloured_by_state():
    [bar] = chart(
        [
            booking(
                3, START + timedelta(days=2), START + timedelta(days=4, hours=12), state="scheduled"
            )
        ]
    ).bars
    assert (bar.x, bar.y, bar.width, bar.height) == (280.0, 92.0, 250.0, 16)
    assert (bar.fill, bar.ink, bar.state) == ("#bfdbfe", "#1e3a8a", "scheduled")
    assert (bar.continues_before, bar.continues_after) == (False, False)
    span = "Wed 2 Dec 2026, 00:00 UTC – Fri 4 Dec 2026, 12:00 UTC"
    assert bar.title == f"rsv_aaaaaaaaaaaaaa · Acme · scheduled · {span}"


def test_bars_are_clipped_to_the_chart_and_say_so():
    before = booking(1, START - timedelta(days=3), START + timedelta(days=1))
    after = booking(2, END - timedelta(days=1), END + timedelta(days=5))
    outside = booking(1, END, END + timedelta(days=1))
    unknown = booking(99, START, END)  # a node of another cluster
    bars = chart([before, after, outside, unknown]).bars
    assert [(b.x, b.width, b.continues_before, b.continues_after) for b in bars] == [
        (80.0, 100.0, True, False),
        (980.0, 100.0, False, True),
    ]


@pytest.mark.parametrize(
    ("width", "label"),
    [
        (200.0, "rsv_aaaaaaaaaaaaaa · Acme"),  # 25 characters: 160 px + padding
        (167.9, "rsv_aaaaaaaaaaaaaa"),
        (123.2, "rsv_aaaaaaaaaaaaaa"),  # 18 characters: exactly 115.2 px + 8
        (123.1, ""),
    ],
)
def test_a_label_shows_as_much_as_fits(width, label):
    assert timeline.fit_label("rsv_aaaaaaaaaaaaaa", "Acme", width) == label


def test_days_are_ticked_and_labelled_and_now_is_marked():
    drawn = chart([])
    assert [(t.x, t.label) for t in drawn.ticks[:3]] == [
        (80.0, "Mon 30 Nov"),
        (180.0, "Tue 1 Dec"),
        (280.0, "Wed 2"),
    ]
    assert (len(drawn.ticks), drawn.ticks[-1]) == (11, timeline.Tick(x=1080.0, label=""))
    assert drawn.now_x == 230.0
    assert chart([], now=END + timedelta(hours=1)).now_x is None


def test_narrow_days_are_labelled_on_mondays_only():
    drawn = timeline.layout(
        lanes=LANES, bookings=[], start=START, end=START + timedelta(days=56), now=START, width=1096
    )
    labelled = [t.label for t in drawn.ticks if t.label]
    assert labelled == [
        "Mon 30 Nov",
        "Mon 7 Dec",
        "Mon 14 Dec",
        "Mon 21 Dec",
        "Mon 28 Dec",
        "Mon 4 Jan",
        "Mon 11 Jan",
        "Mon 18 Jan",
    ]


@pytest.mark.parametrize(
    ("given", "days"), [(None, 14), ("7", 7), ("56", 56), ("30", 14), ("x", 14), ("-7", 14)]
)
def test_the_days_shown_are_one_of_the_choices(given, days):
    assert timeline.parse_days(given) == days


def test_the_window_starts_at_the_beginning_of_yesterday():
    assert timeline.window(NOW, 14) == (
        datetime(2026, 11, 30, tzinfo=UTC),
        datetime(2026, 12, 14, tzinfo=UTC),
    )


# --- The selector and the page ------------------------------------------------------------------
def _scheduled(organization, owner, catalog, nodes: int, start: datetime) -> Reservation:
    reservation = services.reservation_create(
        organization=organization,
        user=owner,
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=nodes,
        window=Window(start, start + hours(24)),
    )
    return lifecycle.reservation_transition(reservation=reservation, to="scheduled", actor=None)


def test_the_timeline_reads_its_cluster_in_two_queries(
    catalog, organization, owner, django_assert_num_queries
):
    first = _scheduled(organization, owner, catalog, 2, NEXT_HOUR)
    _scheduled(organization, owner, catalog, 1, NEXT_HOUR + hours(24 * 30))  # outside the window
    with django_assert_num_queries(2):
        data = selectors.cluster_timeline(catalog.east_a, *timeline.window(NOW, 14))
    assert [n["hostname"] for n in data.nodes] == [f"east-a-n{i:02d}" for i in range(4)]
    assert [
        (a["reservation__public_id"], a["reservation__state"], a["starts_at"])
        for a in data.allocations
    ] == [(first.public_id, "scheduled", NEXT_HOUR)] * 2


def test_the_page_draws_bars_linked_to_their_reservations(catalog, organization, owner):
    reservation = _scheduled(organization, owner, catalog, 2, NEXT_HOUR)
    Node.objects.filter(hostname="east-a-n03").update(status="maintenance")
    client = verified_client(make_staff("Operations"))
    url = reverse("admin:capacity_cluster_timeline", args=[catalog.east_a.pk])
    response = client.get(url, {"days": "7"})
    assert response.status_code == 200
    drawn = response.context["chart"]
    assert [r.hostname for r in drawn.rows] == [f"east-a-n{i:02d}" for i in range(4)]
    assert [r.status for r in drawn.rows] == ["available"] * 3 + ["maintenance"]
    change = reverse("admin:capacity_reservation_change", args=[reservation.pk])
    assert [(b.url, b.label) for b in drawn.bars] == [
        (change, reservation.public_id)  # 140 px: the organization does not fit too
    ] * 2
    html = response.content.decode()
    assert html.count(f'<a href="{change}">') == 2
    assert "<strong>7 days</strong>" in html
