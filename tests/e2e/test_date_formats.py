"""The reservation page and the back office's reservation list write moments one way, with the
zone, at laptop and phone widths."""

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import expect

from capacity import lifecycle
from capacity.models import Reservation
from capacity.windows import ceil_hour
from core.dates import format_datetime
from tests.backoffice.conftest import make_staff, verified_client
from tests.capacity.test_reservations import reserve
from tests.conftest import client_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", Path(settings.BASE_DIR) / "var" / "screenshots"))
SIZES = {"laptop": {"width": 1366, "height": 800}, "phone": {"width": 390, "height": 844}}


def signed_in(new_page, client, live_server, viewport):
    page = new_page(viewport=viewport)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": live_server.url}])
    return page


@pytest.mark.parametrize("size", sorted(SIZES))
def test_the_reservation_page_and_the_admin_list_show_one_format(
    new_page, live_server, catalog, organization, owner, size
):
    start = ceil_hour(timezone.now()) + timedelta(hours=2)
    reservation = reserve(organization, owner, catalog, start=start, length=6)
    lifecycle.reservation_transition(
        reservation=reservation, to=Reservation.State.SCHEDULED, actor=None
    )
    SHOTS.mkdir(parents=True, exist_ok=True)

    page = signed_in(new_page, client_for(owner), live_server, SIZES[size])
    page.goto(f"{live_server.url}/o/{organization.slug}/reservations/{reservation.public_id}/")
    expect(page.locator("dt:text-is('Start') + dd")).to_have_text(
        format_datetime(reservation.starts_at)
    )
    expect(page.locator("dt:text-is('End') + dd")).to_have_text(
        format_datetime(reservation.ends_at)
    )
    page.screenshot(path=SHOTS / f"dates-reservation-{size}.png", full_page=True)

    admin = signed_in(
        new_page, verified_client(make_staff(superuser=True)), live_server, SIZES[size]
    )
    admin.goto(f"{live_server.url}/admin/capacity/reservation/")
    expect(admin.locator("td.field-starts").first).to_have_text(
        format_datetime(reservation.starts_at)
    )
    admin.screenshot(path=SHOTS / f"dates-admin-reservations-{size}.png", full_page=True)
