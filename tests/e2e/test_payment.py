"""A customer reserves, is declined, then pays with a 3-D Secure card, in a real browser
against localstripe's Stripe.js stand-in."""

import pytest
import requests
from playwright.sync_api import expect

from billing.models import Payment
from capacity.models import Reservation
from tests.billing.conftest import WEBHOOK_SECRET
from tests.factories import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def fill_card(page, number: str) -> None:
    fields = page.locator("#card-element input")
    for index, value in enumerate([number, "12", "34", "123", "94105"]):
        fields.nth(index).fill(value)


def test_reserve_decline_then_pay_with_three_d_secure(
    page, live_server, stripe_api, settings, catalog, organization, owner, screenshots
):
    settings.STRIPE_JS_URL = f"{stripe_api}/js.stripe.com/v3/"
    requests.post(
        f"{stripe_api}/_config/webhooks/hyperblock",
        data={"url": f"{live_server.url}/stripe/webhook/", "secret": WEBHOOK_SECRET},
        timeout=10,
    ).raise_for_status()
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", owner.email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.goto(
        f"{live_server.url}/o/{organization.slug}/reservations/new/"
        "?gpu_model=h100&region=us-east&node_count=2&duration_hours=24"
    )
    page.wait_for_selector("[data-testid=quote-total]")
    page.click("button:has-text('Reserve')")
    page.click("[data-testid=pay-link]")
    fill_card(page, "4000000000000341")
    page.click("[data-testid=pay-card]")
    # A locator, not a JavaScript predicate: the page's Content-Security-Policy forbids eval.
    expect(page.locator("#card-errors")).to_have_text("Your card was declined.")
    page.screenshot(path=screenshots / "pay-declined.png", full_page=True)
    reservation = Reservation.objects.get()
    assert reservation.state == Reservation.State.HELD

    fill_card(page, "4000002760003184")
    page.click("[data-testid=pay-card]")
    page.click("text=Complete authentication")  # the card form's 3-D Secure check
    page.click("text=Complete authentication")  # and the payment's
    page.wait_for_url(f"**/reservations/{reservation.public_id}/")
    page.screenshot(path=screenshots / "paid.png", full_page=True)
    assert "Active" in page.inner_text("h1")  # it starts now, so it was provisioned at once
    assert page.locator("[data-testid=access] code").count() == 4  # 2 nodes: name and ssh
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.ACTIVE
    assert sorted(Payment.objects.values_list("status", flat=True)) == ["failed", "succeeded"]
