"""The reservation page with a paid extension and SLA credits, and the cancel page, on a laptop
and a phone: every amount shown, nothing wider than the screen. Screenshots go to
var/screenshots/ (reservation-detail-*.png, reservation-cancel-*.png)."""

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from billing.services import extensions, payments, sla
from tests.billing.conftest import card, held_reservation
from tests.billing.test_extensions import save_card
from tests.factories import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SIZES = {"laptop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
POLICY = {
    "degraded": {"percent": Decimal("100"), "grace_minutes": 0, "round_up_to_hour": False},
    "late_start": {"percent": Decimal("50"), "grace_minutes": 15, "round_up_to_hour": True},
    "force_released": {"percent": Decimal("25"), "grace_minutes": 0, "round_up_to_hour": False},
}


def test_the_reservation_and_cancel_pages_fit_a_laptop_and_a_phone(
    new_page, live_server, stripe_api, settings, catalog, organization, owner, screenshots
):
    settings.SLA_CREDIT_POLICY = POLICY
    reservation = held_reservation(organization, owner, catalog)  # in an hour: 50 % back
    payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(stripe_api),
        attempt_token="block",
    )  # fmt: skip
    reservation.refresh_from_db()
    save_card(organization, owner, stripe_api)
    extensions.extension_start(reservation=reservation, actor=owner, hours=4, attempt_token="x")
    sla.sla_credit_grant(reservation_id=reservation.pk, cause="late_start", key="start", minutes=75)
    sla.sla_credit_grant(reservation_id=reservation.pk, cause="degraded", key="n1", minutes=90)
    owner.full_name = "Lorraine Blankenship-Montgomery"  # a long name in the top bar
    owner.save(update_fields=["full_name"])
    detail = f"{live_server.url}/o/{organization.slug}/reservations/{reservation.public_id}/"
    for name, size in SIZES.items():
        page = new_page(viewport=size)
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", owner.email)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.goto(detail)
        # 768.00 + 128.00 paid; 24.00 and 32.00 back as SLA credits.
        expect(page.locator("tr.total")).to_have_text("Total$896.00")
        expect(page.locator("[data-testid=sla-credit] td.num")).to_have_text(["−$24.00", "−$32.00"])
        expect(page.locator("[data-testid=timeline]")).not_to_contain_text("→ by")
        page.screenshot(path=screenshots / f"reservation-detail-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == size["width"]
        page.goto(detail + "cancel/")
        expect(page.locator("[data-testid=refund-quote]")).to_contain_text(
            "You paid $840.00. Canceling now refunds $420.00 (50%)"
        )
        expect(page.locator("[data-testid=refund-lines] td.num")).to_have_text(
            ["$840.00", "$420.00"]
        )
        page.screenshot(path=screenshots / f"reservation-cancel-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == size["width"]
