"""At phone width (390 x 844) no page scrolls sideways as a whole: billing's amounts are on the
screen, the SSH commands stay inside their box, a long organization name ends in an ellipsis
(its full name in the title). At 1366 px the back office's reservation list shows every column.
Screenshots at both widths go to var/screenshots/ (phone-*.png, laptop-*.png)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts import api_keys
from billing.models import Invoice, Refund
from capacity import lifecycle, provisioning
from capacity.models import Reservation
from tests.backoffice.conftest import make_staff, verified_client
from tests.billing.conftest import held_reservation
from tests.capacity.test_reservations import paid
from tests.conftest import client_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1366, "height": 800}
LONG_NAME = "Lorraine Blankenship-Montgomery Advanced Computing Research Laboratories GmbH"
S = Reservation.State


def _signed_in(new_page, live_server, client, viewport) -> Page:
    page = new_page(viewport=viewport)
    page.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    return page


def _active(organization, owner, catalog) -> Reservation:
    reservation = held_reservation(organization, owner, catalog, nodes=2, length=4)
    paid(reservation)
    lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)
    provisioning.reservation_start(reservation)
    provisioning.block_provision(reservation.pk)
    reservation.refresh_from_db()
    assert reservation.state == S.ACTIVE
    return reservation


def _billing_history(organization, owner, catalog) -> None:
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    for index in range(3):
        reservation = held_reservation(
            organization, owner, catalog, nodes=4, length=48, start=start + timedelta(days=index)
        )
        payment = paid(reservation, attempt=f"block-{index}")
        Refund.objects.create(
            payment=payment,
            amount=Decimal("1234.56"),
            currency=payment.currency,
            reason="Canceled by the customer more than 24 hours before the start",
            status=Refund.Status.SUCCEEDED,
        )
        Invoice.objects.create(
            organization=organization,
            reservation=reservation,
            number=f"HB-2026-00{index}",
            amount=Decimal("98765.43"),
            currency=payment.currency,
            status=Invoice.Status.OPEN,
            due_at=timezone.now() + timedelta(days=30),
        )


def _no_sideways_scroll(page: Page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def _inside_viewport(page: Page, selector: str) -> int:
    """How many elements match; fails on the first one not wholly on the screen."""
    boxes = page.locator(selector).evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return [r.left, r.right, e.textContent.trim()]; })"
    )
    width = page.viewport_size["width"]
    for left, right, text in boxes:
        assert left >= 0, (selector, text, left)
        assert right <= width, (selector, text, right)
    return len(boxes)


def test_billing_and_the_reservation_page_fit_a_phone(
    new_page, live_server, catalog, organization, owner, screenshots
):
    organization.name = LONG_NAME
    organization.save(update_fields=["name"])
    _billing_history(organization, owner, catalog)
    active = _active(organization, owner, catalog)
    api_keys.api_key_create(
        organization=organization,
        actor=owner,
        name="CI runner with a long descriptive name",
        scopes=["reservations:read", "reservations:write", "billing:read"],
    )
    client = client_for(owner)
    pages = {
        "api-keys": f"/o/{organization.slug}/api-keys/",
        "billing": f"/o/{organization.slug}/billing/",
        "reservation": f"/o/{organization.slug}/reservations/{active.public_id}/",
        "dashboard": f"/o/{organization.slug}/",
    }
    for size_name, size in {"phone": PHONE, "laptop": LAPTOP}.items():
        page = _signed_in(new_page, live_server, client, size)
        for name, path in pages.items():
            page.goto(live_server.url + path)
            page.screenshot(path=screenshots / f"{size_name}-{name}.png", full_page=True)
            _no_sideways_scroll(page)
        page.goto(live_server.url + pages["billing"])
        for table, rows in (("payments", 4), ("refunds", 3), ("invoices", 3)):
            amounts = f"[data-testid={table}] td[data-label=Amount]"
            assert _inside_viewport(page, amounts) == rows
        page.goto(live_server.url + pages["api-keys"])
        # The key's actions are on the screen, not past its right edge.
        assert _inside_viewport(page, "[data-testid=keys] button") == 2
        page.goto(live_server.url + pages["reservation"])
        commands = page.locator("[data-testid=access] code.wrap")
        expect(commands).to_have_count(2)
        assert _inside_viewport(page, "[data-testid=access] code.wrap") == 2
        # Nothing of a command is hidden in its box (on a phone it wraps instead).
        assert commands.evaluate_all("els => els.every(e => e.scrollWidth <= e.clientWidth)")
        name = page.locator("[data-testid=org-name]")
        expect(name).to_have_attribute("title", LONG_NAME)
        assert name.evaluate("e => getComputedStyle(e).textOverflow") == "ellipsis"
        assert name.evaluate("e => e.scrollWidth > e.clientWidth")  # cut, with the ellipsis


def test_the_back_office_reservation_list_fits_a_laptop(
    new_page, live_server, catalog, organization, owner, screenshots
):
    organization.name = LONG_NAME
    organization.save(update_fields=["name"])
    _billing_history(organization, owner, catalog)
    _active(organization, owner, catalog)
    client = verified_client(make_staff(superuser=True))
    for size_name, size in {"laptop": LAPTOP, "phone": PHONE}.items():
        page = _signed_in(new_page, live_server, client, size)
        page.goto(f"{live_server.url}/admin/capacity/reservation/")
        expect(page.locator("#result_list tbody tr")).to_have_count(4)
        page.screenshot(path=screenshots / f"{size_name}-admin-reservations.png", full_page=True)
        if size_name == "laptop":
            _no_sideways_scroll(page)
            table = page.locator("#result_list")
            assert table.evaluate("e => e.scrollWidth <= e.parentElement.clientWidth")
            assert _inside_viewport(page, "#result_list thead th") == 7
            assert _inside_viewport(page, "#result_list td.field-total") == 4
            expect(page.locator("#result_list .org-name").first).to_have_attribute(
                "title", LONG_NAME
            )
