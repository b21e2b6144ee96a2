"""A customer extends a paid block: sees the price first, pays on the payment page, and only
then does the end move."""

from datetime import timedelta
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from billing.services import payments
from capacity.models import Extension
from tests.billing.conftest import card, held_reservation
from tests.factories import PASSWORD

from .conftest import fill_card

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
WIDTHS = {"laptop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}


def test_extend_shows_the_price_then_pays_then_moves_the_end(
    page, live_server, stripe_api, settings, catalog, organization, owner, screenshots
):
    settings.STRIPE_JS_URL = f"{stripe_api}/js.stripe.com/v3/"
    reservation = held_reservation(organization, owner, catalog)
    payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(stripe_api),
        attempt_token="block",
    )  # fmt: skip
    reservation.refresh_from_db()
    end = reservation.ends_at
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", owner.email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    detail = f"{live_server.url}/o/{organization.slug}/reservations/{reservation.public_id}/"
    page.goto(detail)
    page.fill("form.extend input[name=hours]", "6")
    expect(page.locator("[data-testid=extend-price]")).to_have_text("$192.00")
    for name, size in WIDTHS.items():
        page.set_viewport_size(size)
        page.screenshot(path=screenshots / f"extend-detail-{name}.png", full_page=True)
    page.set_viewport_size(WIDTHS["laptop"])
    page.click("form.extend button[type=submit]")
    page.wait_for_url("**/extend/?hours=6")
    expect(page.locator("[data-testid=extend-pay-card]")).to_have_text("Continue to pay $192.00")
    for name, size in WIDTHS.items():
        page.set_viewport_size(size)
        page.screenshot(path=screenshots / f"extend-confirm-{name}.png", full_page=True)
    page.set_viewport_size(WIDTHS["laptop"])
    page.click("[data-testid=extend-pay-card]")
    page.wait_for_url("**/extensions/*/pay/")
    extension = Extension.objects.get()
    reservation.refresh_from_db()
    assert (extension.state, reservation.ends_at, reservation.total) == (
        "held", end, Decimal("768.00"),
    )  # fmt: skip
    for name, size in WIDTHS.items():
        page.set_viewport_size(size)
        page.screenshot(path=screenshots / f"extend-pay-{name}.png", full_page=True)
    page.set_viewport_size(WIDTHS["laptop"])
    fill_card(page, "4242424242424242")
    page.click("[data-testid=pay-card]")
    page.wait_for_url(f"**/reservations/{reservation.public_id}/")
    expect(page.locator(".messages, [role=status], .alert").first).to_contain_text("extended")
    page.screenshot(path=screenshots / "extend-paid-laptop.png", full_page=True)
    reservation.refresh_from_db()
    extension.refresh_from_db()
    assert extension.state == "paid"
    assert (reservation.ends_at, reservation.total) == (
        end + timedelta(hours=6), Decimal("960.00"),
    )  # fmt: skip
