"""The capacity search and the availability calendar in Chromium, on a laptop and a phone:
results always answer the form as it stands, and the calendar keeps the search's GPU, region
and size. Screenshots: search-*.png, calendar-day-*.png, calendar-hour-*.png."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import expect

from capacity import services
from capacity.windows import Window
from tests.factories import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SIZES = {"laptop": {"width": 1366, "height": 800}, "phone": {"width": 390, "height": 844}}


def sign_in(page, base, user):
    page.goto(f"{base}/login/")
    page.fill("#id_username", user.email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")


def tomorrow_at(hour: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1, hours=hour)


def test_a_refused_start_clears_the_results_it_no_longer_matches(
    new_page, live_server, catalog, organization, owner, screenshots
):
    start = tomorrow_at(10)
    search = f"{live_server.url}/o/{organization.slug}/capacity/"
    for name, size in SIZES.items():
        page = new_page(viewport=size)
        sign_in(page, live_server.url, owner)
        page.goto(
            f"{search}?gpu_model=h100&region=us-east&node_count=2&duration_hours=24"
            f"&starts_at={start:%Y-%m-%dT%H:%M}"
        )
        offerings = page.locator("[data-testid=offerings] article")
        expect(offerings).to_have_count(1)
        expect(offerings.locator("dd").first).to_contain_text(f"{start:%H}:00 UTC")
        page.screenshot(path=screenshots / f"search-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == size["width"]

        # The browser refuses 10:30 (whole hours only) and sends nothing: the old answer goes.
        page.fill("#id_starts_at", f"{start:%Y-%m-%d}T10:30")
        refusal = page.locator("[data-testid=search-invalid] [role=alert]")
        expect(refusal).to_contain_text("Start (UTC):")
        expect(page.locator("[data-testid=offerings]")).to_have_count(0)
        expect(page.locator("#id_starts_at")).to_have_attribute("aria-invalid", "true")
        page.click("button:has-text('Find capacity')")  # blocked by the browser's check
        expect(refusal).to_contain_text("Start (UTC):")
        expect(page.locator("[data-testid=offerings]")).to_have_count(0)
        page.screenshot(path=screenshots / f"search-refused-{name}.png", full_page=True)

        # A whole hour again: the new search answers, for 11:00 and 3 nodes.
        page.fill("#id_starts_at", f"{start:%Y-%m-%d}T11:00")
        page.fill("#id_node_count", "3")
        page.click("button:has-text('Find capacity')")
        expect(offerings.locator("h3")).to_have_text("3 × H100")
        expect(offerings.locator("dd").first).to_contain_text("11:00 UTC")
        expect(page.locator("[data-testid=search-invalid]")).to_have_count(0)
        expect(page.locator("[data-testid=search-stale]")).to_have_count(0)

        # The server's own check answers the same way when the browser lets a value through.
        page.goto(
            f"{search}?gpu_model=h100&region=us-east&node_count=2&duration_hours=24"
            f"&starts_at={start:%Y-%m-%d}T10:30"
        )
        expect(page.locator("[data-testid=search-errors]")).to_contain_text(
            "Blocks start on the hour (for example 09:00, not 09:30)."
        )
        expect(page.locator("[data-testid=offerings]")).to_have_count(0)


def test_the_calendar_keeps_the_search_and_reads_on_a_phone(
    new_page, live_server, catalog, organization, owner, screenshots
):
    # All of the 8-node fabric tomorrow 10:00 to 14:00: 4 nodes (the other fabric) remain.
    busy = tomorrow_at(10)
    services.reservation_create(
        organization=organization, user=owner, gpu_model=catalog.h100, region=catalog.east,
        node_count=8, window=Window(busy, busy + timedelta(hours=4)),
    )  # fmt: skip
    search = f"{live_server.url}/o/{organization.slug}/capacity/"
    for name, size in SIZES.items():
        page = new_page(viewport=size)
        sign_in(page, live_server.url, owner)
        page.goto(f"{search}?gpu_model=h100&region=us-east&node_count=6&duration_hours=2")
        page.click("#calendar-link")
        page.wait_for_url(re.compile(r"/capacity/calendar/\?gpu_model=h100&region=us-east"))
        assert "node_count=6" in page.url
        calendar = page.locator("[data-testid=calendar]")
        expect(calendar).to_have_attribute("data-zoom", "day")
        expect(page.locator("#cal-nodes")).to_have_value("6")
        expect(calendar.locator("[data-testid=cal-capacity]")).to_have_text(
            "12 nodes in service in 2 fabrics; a block fits in one, at most 8"
        )
        days = calendar.locator(".cal-days a.cal-cell")
        expect(days).to_have_count(56)
        expect(days.nth(1)).to_have_text(
            f"{busy:%A} {busy.day} {busy:%b} 4 free nodes in one fabric at the busiest hour, "
            "too few for 6"
        )
        expect(days.nth(2)).to_have_text(re.compile(r" 8 free nodes in one fabric"))
        page.screenshot(path=screenshots / f"calendar-day-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == size["width"]

        days.nth(1).click()
        expect(calendar).to_have_attribute("data-zoom", "hour")
        assert "node_count=6" in page.url
        assert f"week={busy:%Y-%m-%d}" in page.url
        hours = calendar.locator(".cal-hours a.cal-cell")
        expect(hours).to_have_count(7 * 24)
        expect(hours.nth(10)).to_have_text(
            f"{busy:%a} {busy.day} {busy:%b} 10:00 4 nodes free in one fabric, too few for 6"
        )
        expect(hours.nth(9)).to_have_text(
            f"{busy:%a} {busy.day} {busy:%b} 09:00 8 nodes free in one fabric"
        )
        page.screenshot(path=screenshots / f"calendar-hour-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == size["width"]

        # An hour opens the search from it with the same GPU, region, nodes and length.
        hours.nth(14).click()
        page.wait_for_url(re.compile(r"/capacity/\?"))
        expect(page.locator("#id_node_count")).to_have_value("6")
        expect(page.locator("#id_duration_hours")).to_have_value("2")
        expect(page.locator("#id_region")).to_have_value("us-east")
        expect(page.locator("#id_starts_at")).to_have_value(f"{busy:%Y-%m-%d}T14:00")
        expect(page.locator("[data-testid=offerings] [data-kind=exact] h3")).to_have_text(
            "6 × H100"
        )
