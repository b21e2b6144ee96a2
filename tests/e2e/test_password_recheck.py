"""In the browser: a key form stopped for the password comes back filled in as typed, and a
Member's dashboard offers only what a Member may do, on a laptop and a phone. Screenshots go to
var/screenshots/ (recheck-*.png, member-dashboard-*.png)."""

import re

import pytest
from playwright.sync_api import expect

from accounts.models import ApiKey
from accounts.permissions import Role
from tests.conftest import client_for, member_of
from tests.factories import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SIZES = {"laptop": {"width": 1366, "height": 800}, "phone": {"width": 390, "height": 844}}


def _session(new_page, live_server, user, size):
    page = new_page(viewport=size)
    cookie = client_for(user).cookies["sessionid"].value
    page.context.add_cookies([{"name": "sessionid", "value": cookie, "url": live_server.url}])
    return page


def test_the_key_form_survives_the_password_check(
    new_page, live_server, organization, owner, screenshots
):
    keys = f"{live_server.url}/o/{organization.slug}/api-keys/"
    for name, size in SIZES.items():
        page = _session(new_page, live_server, owner, size)
        page.goto(keys)
        page.fill("#id_name", f"CI runner ({name})")
        page.check("input[name=scopes][value='usage:write']")
        page.uncheck("input[name=scopes][value='reservations:read']")
        page.click("button:has-text('Create key')")
        page.wait_for_url(re.compile(r"/account/confirm-password/\?next="))
        page.fill("#id_password", PASSWORD)
        page.click("button:has-text('Continue')")
        page.wait_for_url(keys)
        expect(page.locator("#id_name")).to_have_value(f"CI runner ({name})")
        checked = page.locator("input[name=scopes]:checked")
        expect(checked).to_have_count(1)
        expect(checked).to_have_value("usage:write")
        expect(page.get_by_text("Password confirmed. The form is as you left it")).to_be_visible()
        page.screenshot(path=screenshots / f"recheck-keys-{name}.png", full_page=True)
        assert ApiKey.objects.count() == (0 if name == "laptop" else 1)
        page.click("button:has-text('Create key')")
        expect(page.locator("[data-testid=new-key]")).to_be_visible()
        assert ApiKey.objects.filter(name=f"CI runner ({name})").get().scopes == ["usage:write"]


def test_a_members_shell_offers_only_what_a_member_may_do(
    new_page, live_server, organization, owner, screenshots
):
    member = member_of(organization, Role.MEMBER)
    for name, size in SIZES.items():
        page = _session(new_page, live_server, member, size)
        page.goto(f"{live_server.url}/o/{organization.slug}/")
        expect(page.locator("nav.sidenav a")).to_have_text(
            ["Overview", "Find capacity", "Reservations", "Token usage", "API keys", "Team"]
        )
        expect(page.locator("[data-testid=getting-started] li strong")).to_have_text(
            ["Verify your e-mail address", "Reserve your first GPU block"]
        )
        page.screenshot(path=screenshots / f"member-dashboard-{name}.png", full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
