"""The search page and the calendar hand each other the GPU, region and block size; results
on the search page always answer the form as it stands."""

import html
import re

import pytest

from tests.conftest import client_for

from .test_reservations import reserve
from .test_views import BLOCK, NEXT_HOUR, url

HTMX = {"HTTP_HX_REQUEST": "true"}
CARRIED = "gpu_model=h100&region=us-east&node_count=2&duration_hours=24"


def hrefs(response, pattern: str) -> list[str]:
    found = re.findall(r'href="([^"]*)"', response.content.decode())
    return [html.unescape(h) for h in found if re.search(pattern, html.unescape(h))]


def test_the_search_page_opens_the_calendar_on_its_own_search(catalog, organization, owner):
    client = client_for(owner)
    calendar = url("capacity-calendar", organization)
    page = client.get(url("capacity-search", organization), BLOCK)
    assert hrefs(page, "/capacity/calendar/") == [f"{calendar}?{CARRIED}"]
    # The htmx answer swaps the link too, so it follows the form as it changes.
    partial = client.get(
        url("capacity-search", organization), {**BLOCK, "node_count": 3, "region": "us-west"},
        HTTP_HX_TARGET="offerings", **HTMX,
    )  # fmt: skip
    body = partial.content.decode()
    assert '<a class="btn" id="calendar-link"' in body
    assert 'hx-swap-oob="true"' in body
    assert hrefs(partial, "/capacity/calendar/") == [
        f"{calendar}?gpu_model=h100&region=us-west&node_count=3&duration_hours=24"
    ]
    empty = client.get(url("capacity-search", organization))
    assert hrefs(empty, "/capacity/calendar/") == [calendar]


def test_calendar_links_keep_gpu_region_and_size(catalog, organization, owner):
    client = client_for(owner)
    calendar = url("capacity-calendar", organization)
    search = url("capacity-search", organization)
    params = {"gpu_model": "h100", "region": "us-east", "node_count": "2", "duration_hours": "24"}
    days = client.get(calendar, params)
    assert days.status_code == 200
    assert b'data-zoom="day"' in days.content
    weeks = hrefs(days, r"week=")
    assert len(weeks) == 56
    assert weeks[0] == f"{calendar}?{CARRIED}&week=2026-12-01"
    assert hrefs(days, f"^{search}\\?") == [f"{search}?{CARRIED}"]  # back to the search
    assert b'name="node_count" type="number" min="1" value="2"' in days.content

    week = {**params, "week": "2026-12-03"}
    hours = client.get(calendar, week, HTTP_HX_TARGET="calendar", **HTMX)
    assert b"<html" not in hours.content
    assert b'data-zoom="hour"' in hours.content
    starts = hrefs(hours, "starts_at=")
    assert len(starts) == 7 * 24
    assert starts[9] == f"{search}?{CARRIED}&starts_at=2026-12-03T09:00"
    # No previous week: it would start before today.
    assert hrefs(hours, "week=") == [f"{calendar}?{CARRIED}&week=2026-12-10"]
    assert f'href="{calendar}?{CARRIED.replace("&", "&amp;")}"' in hours.content.decode()  # 8 weeks


def test_an_hour_opens_the_search_with_one_hour_when_no_length_came(catalog, organization, owner):
    client = client_for(owner)
    calendar = url("capacity-calendar", organization)
    search = url("capacity-search", organization)
    page = client.get(calendar, {"gpu_model": "h100", "region": "us-west", "node_count": "3",
                                 "week": "2026-12-01"})  # fmt: skip
    starts = hrefs(page, "starts_at=")
    # Today's hours up to now (09:30) cannot be booked any more: 10:00 is the first link.
    assert len(starts) == 7 * 24 - 10
    assert starts[0] == (
        f"{search}?gpu_model=h100&region=us-west&node_count=3&duration_hours=1"
        "&starts_at=2026-12-01T10:00"
    )


def test_calendar_cells_are_labeled_and_counted_per_fabric(catalog, organization, owner):
    reserve(organization, owner, catalog, nodes=8, start=NEXT_HOUR, length=2)  # all of east-b
    page = client_for(owner).get(
        url("capacity-calendar", organization),
        {"gpu_model": "h100", "region": "us-east", "node_count": "5"},
    )
    body = page.content.decode()
    assert "12 nodes in service in 2 fabrics; a block fits in one, at most 8" in body
    first = re.search(r'<td><a class="cal-cell ([^"]*)" data-free="(\d+)".*?</a></td>', body)
    # 4 free of the largest fabric's 8: "some", and too few for the 5 asked.
    assert (first.group(1), first.group(2)) == ("cal-some short", "4")
    text = re.sub(r"<[^>]+>", "", first.group(0))
    assert text == "Tuesday 1 Dec 4 free nodes in one fabric at the busiest hour, too few for 5"
    assert "<svg" not in body


@pytest.mark.parametrize(
    "params",
    [
        {"gpu_model": "h900", "node_count": "lots", "week": "someday"},
        {"node_count": "0", "duration_hours": "-4"},
    ],
)
def test_bad_calendar_parameters_fall_back_to_defaults(catalog, organization, owner, params):
    page = client_for(owner).get(url("capacity-calendar", organization), params)
    assert page.status_code == 200
    assert page.context["calendar"].zoom == "day"
    assert page.context["node_count"] == 1
    assert page.context["query"] == "gpu_model=h100&region=us-east&node_count=1"


@pytest.mark.parametrize("htmx", [False, True])
def test_an_invalid_search_shows_its_error_and_no_results(catalog, organization, owner, htmx):
    extra = {"HTTP_HX_TARGET": "offerings", **HTMX} if htmx else {}
    page = client_for(owner).get(
        url("capacity-search", organization), {**BLOCK, "starts_at": "2026-12-01T10:30"}, **extra
    )
    body = page.content.decode()
    assert page.context["results"] is None
    assert 'data-testid="search-errors"' in body
    assert "Blocks start on the hour (for example 09:00, not 09:30)." in body
    assert 'data-testid="offerings"' not in body
