"""The public front page on a laptop and a phone: the catalog's list prices, nothing wider than
the screen, and "Create an account" leads through sign-up to "check your inbox". Screenshots go
to var/screenshots/ (front-*.png, front-signup-*.png, front-signup-sent-*.png)."""

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from billing.models import ModelPrice
from capacity.demo import load_catalog

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SIZES = {"laptop": {"width": 1366, "height": 800}, "phone": {"width": 390, "height": 844}}


def test_the_front_page_shows_the_price_list_and_leads_to_sign_up(
    new_page, live_server, screenshots
):
    load_catalog()  # 3 GPU models in 3 regions, as `seed_demo` loads them
    ModelPrice.objects.create(
        model="llama-3-70b", input_per_million=Decimal("0.59"), output_per_million=Decimal("0.79")
    )
    for name, size in SIZES.items():
        page = new_page(viewport=size)
        page.goto(f"{live_server.url}/")
        expect(page).to_have_title("Hyperblock · GPU clusters by the hour")
        expect(page.locator("h1")).to_have_text("GPU clusters by the hour, reserved in minutes")
        h100 = page.locator("[data-testid=price-h100-sxm]")
        expect(h100.locator("h3")).to_have_text("H100 SXM 80 GB")
        expect(h100.locator(".front-from")).to_have_text("from $2.39 / GPU-hour")
        expect(h100.locator("tbody th")).to_have_text(
            ["EU NorthStockholm, Sweden", "US EastAshburn, Virginia", "US WestHillsboro, Oregon"]
        )
        # Per GPU-hour and per node-hour (8 GPUs), region by region.
        expect(h100.locator("tbody td")).to_have_text(
            ["$2.59", "$20.72", "$2.49", "$19.92", "$2.39", "$19.12"]
        )
        expect(page.locator("[data-testid^=price-] h3")).to_have_text(
            ["H100 SXM 80 GB", "H200 141 GB", "B200 192 GB"]
        )
        expect(page.get_by_role("row", name="llama-3-70b").locator("th, td")).to_have_text(
            ["llama-3-70b", "$0.59", "$0.79"]
        )
        page.screenshot(path=screenshots / f"front-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == size["width"]

        page.get_by_test_id("front-signup").click()
        page.wait_for_url(f"{live_server.url}/signup/")
        expect(page).to_have_title("Create your account · Hyperblock")
        expect(page.locator(".auth-brand")).to_have_text("▦Hyperblock")
        page.screenshot(path=screenshots / f"front-signup-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == size["width"]
        page.fill("#id_full_name", "Ada Lovelace")
        page.fill("#id_email", f"ada@{name}.example")
        page.fill("#id_password", "Tensor-cores-4-all")
        page.fill("#id_organization_name", f"Engines {name}")
        expect(page.locator("#id_organization_slug")).to_have_value(f"engines-{name}")
        page.select_option("#id_country", "GB")
        page.click("button:has-text('Create account')")
        page.wait_for_url(f"{live_server.url}/signup/sent/")
        expect(page).to_have_title("Check your inbox · Hyperblock")
        expect(page.get_by_test_id("signup-sent")).to_contain_text(
            f"We sent a message to ada@{name}.example."
        )
        page.screenshot(path=screenshots / f"front-signup-sent-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == size["width"]
        page.goto(f"{live_server.url}/")
        page.get_by_role("banner").get_by_role("link", name="Sign in").click()
        page.wait_for_url(f"{live_server.url}/login/")
        expect(page).to_have_title("Sign in · Hyperblock")
