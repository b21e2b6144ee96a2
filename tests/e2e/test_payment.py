"""Paying for a held reservation by card in a real browser, against the local Stripe
emulator's Stripe.js stand-in: 3-D Secure asked once, a number typed with spaces, and every
failure told in a sentence of ours (the raw text goes to the console)."""

import re
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from playwright.sync_api import ConsoleMessage, Page, expect

from billing.models import Payment
from capacity.models import Reservation
from capacity.windows import ceil_hour
from tests.billing.conftest import WEBHOOK_SECRET, held_reservation
from tests.factories import PASSWORD

from .conftest import fill_card

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LAPTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}
DECLINED_SENTENCE = "Your bank declined this card. Try another card, or ask your bank why."
# What must never reach the page: the emulator's or the browser's own words.
RAW = re.compile(r"Cannot read|undefined|Bad request|TypeError|HTTP \d|Failed to fetch|null")


@pytest.fixture
def paying(live_server, stripe_api, settings, catalog, organization, owner):
    settings.STRIPE_JS_URL = f"{stripe_api}/js.stripe.com/v3/"
    requests.post(
        f"{stripe_api}/_config/webhooks/hyperblock",
        data={"url": f"{live_server.url}/stripe/webhook/", "secret": WEBHOOK_SECRET},
        timeout=10,
    ).raise_for_status()
    return live_server.url


def sign_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/o/"))


def console_log(page: Page) -> list[str]:
    lines: list[str] = []

    def keep(message: ConsoleMessage) -> None:
        lines.append(f"{message.type}: {message.text}")

    page.on("console", keep)
    page.on("pageerror", lambda exc: lines.append(f"pageerror: {exc}"))
    return lines


def pay_page(base: str, organization, reservation) -> str:
    return f"{base}/o/{organization.slug}/reservations/{reservation.public_id}/pay/"


def card_errors(page: Page) -> str:
    return page.locator("#card-errors").inner_text()


def test_three_d_secure_asks_once_then_the_reservation_is_paid(
    page, paying, catalog, organization, owner, screenshots
):
    log = console_log(page)
    sign_in(page, paying, owner.email)
    page.goto(
        f"{paying}/o/{organization.slug}/reservations/new/"
        "?gpu_model=h100&region=us-east&node_count=2&duration_hours=24"
    )
    page.wait_for_selector("[data-testid=quote-total]")
    # Starts the minute it is paid: the quote says no refund is possible once paid.
    expect(page.locator("[data-testid=refund-policy]")).to_contain_text(
        "once paid it can no longer be canceled or refunded"
    )
    for name, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=screenshots / f"quote-refund-policy-{name}.png", full_page=True)
    page.set_viewport_size(LAPTOP)
    page.click("button:has-text('Reserve')")
    page.click("[data-testid=pay-link]")
    fill_card(page, "4000000000000341")
    page.click("[data-testid=pay-card]")
    expect(page.locator("#card-errors")).to_have_text(DECLINED_SENTENCE)
    assert any("Your card was declined." in line for line in log)  # the raw text, logged
    reservation = Reservation.objects.get()
    assert reservation.state == Reservation.State.HELD

    prompts = []

    def authenticate(prompt) -> None:
        prompts.append(prompt)
        page.get_by_role("button", name="Complete authentication").click()

    # Each prompt the bank shows is answered (so a second one would be counted, not hang).
    page.add_locator_handler(page.get_by_role("dialog", name="Test bank: 3-D Secure"), authenticate)
    fill_card(page, "4000002760003184")
    page.click("[data-testid=pay-card]")
    expect(page).to_have_url(re.compile(rf"/reservations/{reservation.public_id}/$"))
    expect(page.locator("h1 .badge")).to_have_text("Active")  # it starts now: provisioned
    assert len(prompts) == 1
    assert sum("3-D Secure prompt" in line for line in log) == 1
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.ACTIVE
    assert sorted(Payment.objects.values_list("status", flat=True)) == ["failed", "succeeded"]
    page.screenshot(path=screenshots / "pay-3ds-paid.png", full_page=True)


def test_a_card_number_typed_with_spaces_pays(
    page, paying, catalog, organization, owner, screenshots
):
    reservation = held_reservation(organization, owner, catalog)
    sign_in(page, paying, owner.email)
    page.goto(pay_page(paying, organization, reservation))
    fill_card(page, "4242 4242 4242 4242")
    page.click("[data-testid=pay-card]")
    expect(page).to_have_url(re.compile(rf"/reservations/{reservation.public_id}/$"))
    expect(page.locator(".alert-success")).to_have_text(
        "Payment received. Your reservation is confirmed."
    )
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.SCHEDULED
    payment = Payment.objects.get()
    assert (payment.status, payment.card_last4) == ("succeeded", "4242")


def test_every_failure_is_told_in_a_sentence_and_logged_raw(
    new_page, paying, catalog, organization, owner, screenshots
):
    start = ceil_hour(timezone.now()) + timedelta(days=10)
    reservation = held_reservation(organization, owner, catalog, start=start)
    for name, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        page = new_page(viewport=viewport)
        log = console_log(page)
        sign_in(page, paying, owner.email)
        page.goto(pay_page(paying, organization, reservation))
        expect(page.locator("[data-testid=refund-policy]")).to_contain_text("$768.00 (100%)")
        page.screenshot(path=screenshots / f"pay-refund-policy-{name}.png", full_page=True)

        # Nothing typed at all.
        page.click("[data-testid=pay-card]")
        expect(page.locator("#card-errors")).to_have_text("Enter your card number to pay.")
        assert any("Your card number is incomplete." in line for line in log)
        page.screenshot(path=screenshots / f"pay-error-{name}.png", full_page=True)
        if name == "phone":
            break

        # A number too short, then an expiry month that does not exist.
        fill_card(page, "4242 4242")
        page.click("[data-testid=pay-card]")
        expect(page.locator("#card-errors")).to_have_text(
            "The card number is too short. Type all the digits on the card."
        )
        fill_card(page, "4242424242424242")
        page.locator("#card-element input").nth(1).fill("13")
        page.click("[data-testid=pay-card]")
        expect(page.locator("#card-errors")).to_have_text(
            "The expiry month is not valid. Enter it as two digits, 01 to 12."
        )
        page.locator("#card-element input").nth(1).fill("12")
        page.locator("#card-element input").nth(2).fill("19")
        page.click("[data-testid=pay-card]")
        expect(page.locator("#card-errors")).to_have_text(
            "This card has expired. Use another card."
        )

        # Our server unreachable, then failing.
        fill_card(page, "4242424242424242")
        page.route("**/pay/card/", lambda route: route.abort("internetdisconnected"))
        page.click("[data-testid=pay-card]")
        expect(page.locator("#card-errors")).to_have_text(
            "We could not reach the payment service, so nothing was charged. Check your "
            "internet connection and try again."
        )
        page.unroute("**/pay/card/")
        page.route(
            "**/pay/card/",
            lambda route: route.fulfill(status=500, body="<h1>Server Error (500)</h1>"),
        )
        page.click("[data-testid=pay-card]")
        expect(page.locator("#card-errors")).to_have_text(
            "Something went wrong on our side. Reload the page to see whether the payment "
            "went through before you try again."
        )
        assert any("Server Error (500)" in line for line in log)
        page.unroute("**/pay/card/")

        # Declined by the bank.
        fill_card(page, "4000 0000 0000 0341")
        page.click("[data-testid=pay-card]")
        expect(page.locator("#card-errors")).to_have_text(DECLINED_SENTENCE)
        assert not RAW.search(page.locator("main").inner_text())
        # No script broke: the only errors are the refused requests the test caused.
        assert [
            line
            for line in log
            if line.startswith(("error", "pageerror"))
            and not line.startswith("error: Failed to load resource")
        ] == []
        assert Payment.objects.get().status == "failed"
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.HELD


def test_saving_a_card_with_three_d_secure_asks_once(
    page, paying, catalog, organization, owner, screenshots
):
    from billing.models import BillingAccount

    log = console_log(page)
    sign_in(page, paying, owner.email)
    page.goto(f"{paying}/o/{organization.slug}/billing/cards/new/")  # just signed in: no re-check
    page.click("[data-testid=save-card]")
    expect(page.locator("#card-errors")).to_have_text("Enter the card number to save.")
    fill_card(page, "4000 0027 6000 3184")
    page.click("[data-testid=save-card]")
    page.get_by_role("button", name="Complete authentication").click()
    expect(page.locator(".alert-success")).to_have_text(
        "Card saved. It is now the default for payments."
    )
    assert sum("3-D Secure prompt" in line for line in log) == 1
    assert BillingAccount.objects.get().default_payment_method_id.startswith("pm_")
