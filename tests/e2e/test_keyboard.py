"""Search, reserve and pay with the keyboard alone: Tab to move, Enter to act, typing to fill,
the card typed into the card field the same way. No mouse event reaches the page. Every stop
the focus makes on the way shows where it is (an outline or a ring)."""

import re

import pytest
from django.test import Client
from playwright.sync_api import Page, expect

from billing.models import Payment
from capacity.models import Reservation

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# What the focused element looks like, and what it is, read from the browser.
FOCUS_STYLE = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const outlined = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
  const ringed = style.boxShadow !== "none";
  return {
    tag: el.tagName.toLowerCase(),
    text: (el.textContent || el.value || "").trim().slice(0, 40),
    // A date field's focus sits on one of its parts, inside the field.
    visible: el.matches(":focus-visible, :focus-within") && (outlined || ringed),
  };
}"""


class Keyboard:
    """Tabs through a page; every element the focus lands on must show it."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.stops: list[str] = []

    def tab_to(self, selector: str, *, limit: int = 60) -> None:
        target = self.page.locator(selector).first
        expect(target).to_be_visible()
        for _ in range(limit):
            self.page.keyboard.press("Tab")
            focus = self.page.evaluate(FOCUS_STYLE)
            self.stops.append(f"{focus['tag']} {focus['text']!r}")
            assert focus["visible"], f"focus is not visible on {self.stops[-1]}"
            if target.evaluate("el => el === document.activeElement"):
                return
        raise AssertionError(f"Tab never reached {selector}; stops: {self.stops[-limit:]}")

    def replace(self, text: str) -> None:
        """Type over what the focused field holds."""
        self.page.keyboard.press("ControlOrMeta+a")
        self.page.keyboard.type(text)


def test_search_reserve_and_pay_with_the_keyboard_only(
    browser, live_server, stripe_api, settings, catalog, organization, owner, screenshots
):
    settings.STRIPE_JS_URL = f"{stripe_api}/js.stripe.com/v3/"
    client = Client()
    client.force_login(owner)
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    page = context.new_page()
    clicks: list[str] = []
    page.expose_function("mouseUsed", lambda kind: clicks.append(kind))
    # A mouse press, or a click with a click count (one from Enter or Space has none).
    page.add_init_script(
        "addEventListener('pointerdown', (e) => e.isTrusted && mouseUsed('pointerdown'), true);"
        "addEventListener('mousedown', (e) => e.isTrusted && mouseUsed('mousedown'), true);"
        "addEventListener('click', (e) => e.isTrusted && e.detail > 0 && mouseUsed('click'), true);"
    )
    keys = Keyboard(page)

    # Search: two nodes for four hours, starting as soon as paid.
    page.goto(f"{live_server.url}/o/{organization.slug}/capacity/")
    keys.tab_to("#id_region")
    page.keyboard.type("US East")  # a closed select picks the option typed
    expect(page.locator("#id_region")).to_have_value("us-east")
    keys.tab_to("#id_node_count")
    keys.replace("2")
    keys.tab_to("#id_duration_hours")
    keys.replace("4")
    keys.tab_to("button:has-text('Find capacity')")
    page.keyboard.press("Enter")
    exact = page.locator("[data-testid=offerings] [data-kind=exact]")
    expect(exact.locator(".price")).to_have_text("$128.00")  # 2 x 8 GPUs x 4 h x $2.00

    # Pick the exact offering and reserve it.
    keys.tab_to("[data-testid=offerings] [data-kind=exact] >> text=Select")
    page.keyboard.press("Enter")
    expect(page.locator("[data-testid=quote-total]")).to_have_text("$128.00")
    keys.tab_to("button:has-text('Reserve')")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/reservations/rsv_\w+/$"))
    reservation = Reservation.objects.get()
    assert (reservation.state, reservation.node_count) == (Reservation.State.HELD, 2)
    expect(page.locator("h1 .badge")).to_have_text("Held")

    # Pay: Tab into the card field's inputs and type the card.
    keys.tab_to("[data-testid=pay-link]")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/reservations/{reservation.public_id}/pay/")
    keys.tab_to("#card-element input")
    card = page.locator("#card-element input")
    typed = ["4242424242424242", "12", "34", "123", "94105"]
    for index, value in enumerate(typed):
        # The field moves on by itself once a part is complete; otherwise Tab moves on.
        if index and not card.nth(index).evaluate("el => el === document.activeElement"):
            keys.tab_to(f"#card-element input >> nth={index}", limit=1)
        page.keyboard.type(value)
    for index, value in enumerate(typed):
        expect(card.nth(index)).to_have_value(value)
    page.screenshot(path=screenshots / "keyboard-pay.png", full_page=True)
    keys.tab_to("[data-testid=pay-card]")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/reservations/{reservation.public_id}/")
    expect(page.locator("h1 .badge")).to_have_text("Active")  # it starts now
    page.screenshot(path=screenshots / "keyboard-paid.png", full_page=True)

    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.ACTIVE
    assert list(Payment.objects.values_list("status", "amount")) == [
        (Payment.Status.SUCCEEDED, reservation.total)
    ]
    assert reservation.total == 128
    assert clicks == []
    context.close()
