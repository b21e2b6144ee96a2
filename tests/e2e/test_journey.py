"""The whole customer journey in one browser run, against the live server, a real Celery worker
and localstripe: sign-up to a negotiated price set by sales in the back office.

Every step is clicked and typed as a person would; e-mails are read from the outbox the worker
sends them to. A screenshot of each step goes to the folder the `screenshots` fixture prints.
"""

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import Group, Permission
from django.core import mail
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import ConsoleMessage, Page, expect

from accounts.models import Membership, Organization, User
from backoffice.roles import SALES, STAFF_GROUPS
from billing.models import Payment, Refund
from capacity.models import NegotiatedRate, Reservation
from core import crypto
from tests.billing.conftest import WEBHOOK_SECRET
from tests.factories import PASSWORD as STAFF_PASSWORD
from tests.factories import UserFactory

from .conftest import fill_card

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

S = Reservation.State
EMAIL = "ada@acme-robotics.example"
PASSWORD = "Tensor-cores-4-all"
TEAMMATE = "grace@acme-robotics.example"
TEAMMATE_PASSWORD = "Pipeline-parallel-7"
ORG_NAME = "Acme Robotics"
SLUG = "acme-robotics"
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 900}


class Steps:
    """Numbered full-page screenshots, one per step, in the order they were taken."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        for old in folder.glob("journey-*.png"):
            old.unlink()

    def shot(self, page: Page, name: str) -> None:
        # A request htmx still has in flight greys its target out: wait for the page at rest.
        expect(page.locator(".htmx-request")).to_have_count(0)
        page.mouse.move(0, 0)  # no hover highlight on whatever was clicked last
        self.count += 1
        page.screenshot(path=self.folder / f"journey-{self.count:02d}-{name}.png", full_page=True)

    def phone(self, page: Page, name: str) -> None:
        page.set_viewport_size(PHONE)
        page.screenshot(path=self.folder / f"journey-phone-{name}.png", full_page=True)
        page.set_viewport_size(LAPTOP)


# Errors the browser logs that the journey causes on purpose: the declined card's answer, and
# the admin pages, which have no icon of their own.
EXPECTED_CONSOLE_ERRORS = {
    ("/pay/card/", "the server responded with a status of 402 (Payment Required)"),
    ("/favicon.ico", "the server responded with a status of 404 (Not Found)"),
}


def watch_console(page: Page, errors: list[str]) -> None:
    """Keep what the browser reports as broken: script errors and refused resources (a
    Content-Security-Policy violation shows up here first)."""

    def console(message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        if message.type == "error" and not any(
            where.endswith(path) and text in message.text for path, text in EXPECTED_CONSOLE_ERRORS
        ):
            errors.append(f"{where}: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))


def mail_to(address: str, subject: str, timeout: float = 20) -> str:
    """The body of the e-mail with this subject, once the worker has sent it."""
    deadline = time.monotonic() + timeout
    while True:
        for message in mail.outbox:
            if message.to == [address] and message.subject == subject:
                return message.body
        assert time.monotonic() < deadline, (
            f"no e-mail {subject!r} to {address}; sent: {[(m.to, m.subject) for m in mail.outbox]}"
        )
        time.sleep(0.1)


def link_in(body: str) -> str:
    return re.search(r"^(http://\S+)$", body, re.MULTILINE).group(1)


def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def confirm_password_if_asked(page: Page, password: str, steps: Steps) -> bool:
    """Sensitive actions may ask for the password again; answer as the user would."""
    if "/account/confirm-password/" not in page.url:
        return False
    page.fill("#id_password", password)
    steps.shot(page, "confirm-password")
    page.click("button:has-text('Continue')")
    page.wait_for_load_state()
    return True


def hour_label(moment: datetime) -> str:
    """How the portal writes a moment in titles: Fri 4 Dec."""
    return f"{moment:%a} {moment.day} {moment:%b}"


def totp_code(device: TOTPDevice) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():06d}"


def _staff_group(name: str) -> Group:
    """The group as the data migration makes it. A transactional test empties every table when
    it ends, so a browser test that runs after one finds no groups; the permissions themselves
    are made again after each emptying (post_migrate)."""
    group, _ = Group.objects.get_or_create(name=name)
    labels = (label.split(".") for label in sorted(STAFF_GROUPS[name]))
    group.permissions.set(
        Permission.objects.get(content_type__app_label=app, codename=codename)
        for app, codename in labels
    )
    return group


def test_customer_journey_from_sign_up_to_a_negotiated_price(
    new_page, live_server, stripe_api, settings, catalog, celery_worker, screenshots
):
    settings.STRIPE_JS_URL = f"{stripe_api}/js.stripe.com/v3/"
    settings.SITE_URL = live_server.url  # the links in e-mails point at this server
    requests.post(
        f"{stripe_api}/_config/webhooks/hyperblock",
        data={"url": f"{live_server.url}/stripe/webhook/", "secret": WEBHOOK_SECRET},
        timeout=10,
    ).raise_for_status()
    url = live_server.url
    steps = Steps(screenshots)
    errors: list[str] = []
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    watch_console(page, errors)

    # --- A new customer signs up ---------------------------------------------------------
    page.goto(f"{url}/signup/")
    page.fill("#id_full_name", "Ada Lovelace")
    page.fill("#id_email", EMAIL)
    page.fill("#id_password", PASSWORD)
    page.fill("#id_organization_name", ORG_NAME)
    # The address is suggested from the name while typing.
    expect(page.locator("#slug-status")).to_have_text(f"/o/{SLUG} is available.")
    expect(page.locator("#id_organization_slug")).to_have_value(SLUG)
    page.select_option("#id_country", "DE")
    steps.shot(page, "signup")
    page.click("button:has-text('Create account')")
    # The answer an address that already has an account would get too: look in the inbox.
    page.wait_for_url(f"{url}/signup/sent/")
    expect(page.locator("[data-testid=signup-sent]")).to_contain_text(
        f"We sent a message to {EMAIL}."
    )
    steps.shot(page, "signup-sent")
    organization = Organization.objects.get(slug=SLUG)
    assert organization.name == ORG_NAME
    assert organization.billing_email == EMAIL
    assert organization.payment_terms == "card"
    customer = User.objects.get(email=EMAIL)
    assert customer.is_verified is False
    assert list(Membership.objects.values_list("user__email", "role")) == [(EMAIL, "owner")]

    # --- ... and verifies the e-mail address -----------------------------------------------
    verification = mail_to(EMAIL, "Verify your e-mail address for Hyperblock")
    page.goto(link_in(verification))
    page.wait_for_url(f"{url}/login/")
    expect(page.locator(".alert-success")).to_have_text(f"Thank you: {EMAIL} is verified.")
    page.fill("#id_username", EMAIL)
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{url}/o/{SLUG}/")
    expect(page.locator("[data-testid=verify-banner]")).to_have_count(0)
    steps.shot(page, "verified")
    customer.refresh_from_db()
    assert customer.is_verified is True

    # --- Searches capacity on the heatmap ------------------------------------------------
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = today + timedelta(days=3)  # within 7 days of the start: half is refunded
    start = day.replace(hour=9)
    page.click("nav.sidenav >> text=Find capacity")
    page.click("text=Availability calendar")
    calendar = page.locator("[data-testid=calendar]")
    expect(calendar).to_have_attribute("data-zoom", "day")
    expect(calendar.locator(".card-head")).to_have_text(re.compile(r"H100 in US East\s+12 nodes"))
    days = calendar.locator(".cal-days a.cal-cell")
    expect(days).to_have_count(56)  # 8 weeks
    # A block fits in one fabric: the largest of us-east's two (4 and 8 nodes) is all free.
    expect(days.nth(3)).to_have_text(
        f"{day:%A} {day.day} {day:%b} 8 free nodes in one fabric at the busiest hour"
    )
    steps.shot(page, "heatmap-weeks")
    days.nth(3).click()
    expect(calendar).to_have_attribute("data-zoom", "hour")
    hours = calendar.locator(".cal-hours .cal-cell")
    expect(hours).to_have_count(7 * 24)
    expect(hours.nth(9)).to_have_text(f"{hour_label(start)} 09:00 8 nodes free in one fabric")
    steps.shot(page, "heatmap-hours")
    hours.nth(9).click()
    page.wait_for_url(re.compile(r"/capacity/\?"))
    expect(page.locator("#id_starts_at")).to_have_value(f"{start:%Y-%m-%dT%H:%M}")
    expect(page.locator("#id_region")).to_have_value("us-east")
    page.fill("#id_node_count", "2")
    page.fill("#id_duration_hours", "24")
    page.click("button:has-text('Find capacity')")
    exact = page.locator("[data-testid=offerings] [data-kind=exact]")
    expect(exact.locator("h3")).to_have_text("2 × H100")
    expect(exact).to_have_count(1)
    expect(exact.locator(".price")).to_have_text("$768.00")  # 2 nodes x 8 GPUs x 24 h x $2.00
    expect(exact.locator("dd").first).to_have_text(f"{hour_label(start)}, 09:00 UTC")
    steps.shot(page, "offerings")

    # --- Reserves two nodes ----------------------------------------------------------------
    exact.locator("text=Select").click()
    expect(page.locator("[data-testid=quote-total]")).to_have_text("$768.00")
    expect(page.locator(".availability")).to_have_text(
        "✓ 8 nodes free in one cluster for this window."
    )
    steps.shot(page, "quote")
    page.click("button:has-text('Reserve')")
    page.wait_for_url(re.compile(r"/reservations/rsv_\w+/$"))
    later = Reservation.objects.get()
    assert (later.state, later.node_count, later.starts_at, later.total) == (
        S.HELD,
        2,
        start,
        Decimal("768.00"),
    )
    expect(page.locator("h1 .badge")).to_have_text("Held")
    expect(page.locator(".alert-success")).to_have_text(
        "Reserved. The nodes are held for you while you pay."
    )
    expect(page.locator("[data-testid=pay-link]")).to_have_text("Pay $768.00")
    steps.shot(page, "held")

    # --- Pays with a declined card, then with a good one ----------------------------------
    page.click("[data-testid=pay-link]")
    fill_card(page, "4000000000000341")
    page.click("[data-testid=pay-card]")
    expect(page.locator("#card-errors")).to_have_text(
        "Your bank declined this card. Try another card, or ask your bank why."
    )
    steps.shot(page, "declined")
    assert Reservation.objects.get(pk=later.pk).state == S.HELD
    fill_card(page, "4242424242424242")
    page.click("[data-testid=pay-card]")
    page.wait_for_url(f"{url}/o/{SLUG}/reservations/{later.public_id}/")
    expect(page.locator("h1 .badge")).to_have_text("Scheduled")
    expect(page.locator(".alert-success")).to_have_text(
        "Payment received. Your reservation is confirmed."
    )
    steps.shot(page, "paid")
    assert Reservation.objects.get(pk=later.pk).state == S.SCHEDULED
    assert list(
        Payment.objects.filter(reservation=later).order_by("pk").values_list("status", "amount")
    ) == [("failed", Decimal("768.00")), ("succeeded", Decimal("768.00"))]

    # --- ... and a block starting now with 3-D Secure, watched until it is active ----------
    page.click("nav.sidenav >> text=Find capacity")
    page.select_option("#id_region", "us-east")
    page.fill("#id_node_count", "2")
    page.fill("#id_duration_hours", "4")
    page.click("button:has-text('Find capacity')")
    expect(exact.locator("dd").first).to_have_text("As soon as paid")
    expect(exact.locator(".price")).to_have_text("$128.00")  # 2 nodes x 8 GPUs x 4 h x $2.00
    exact.locator("text=Select").click()
    expect(page.locator("[data-testid=quote-total]")).to_have_text("$128.00")
    page.click("button:has-text('Reserve')")
    page.wait_for_url(re.compile(r"/reservations/rsv_\w+/$"))
    now_block = Reservation.objects.exclude(pk=later.pk).get()
    page.click("[data-testid=pay-link]")
    fill_card(page, "4000002760003184")
    page.click("[data-testid=pay-card]")
    page.click("text=Complete authentication")  # the payment's 3-D Secure check, asked once
    page.wait_for_url(f"{url}/o/{SLUG}/reservations/{now_block.public_id}/")
    # The page polls while the worker provisions, and redraws itself on every change.
    expect(page.locator("#live")).to_have_attribute("data-state", "active", timeout=30_000)
    expect(page.locator("h1 .badge")).to_have_text("Active")
    now_block.refresh_from_db()
    assert (now_block.state, now_block.total) == (S.ACTIVE, Decimal("128.00"))
    timeline = page.locator("[data-testid=timeline] strong")
    expect(timeline).to_have_text(
        ["Reserved", "Held → Scheduled", "Scheduled → Provisioning", "Provisioning → Active"]
    )
    steps.shot(page, "active")

    # --- Copies its access details -------------------------------------------------------
    nodes = now_block.access_details["nodes"]
    assert len(nodes) == 2
    ssh = [f"ssh -p {n['ssh_port']} {n['ssh_user']}@{n['ssh_host']}" for n in nodes]
    access = page.locator("[data-testid=access]")
    expect(access.locator("code.wrap")).to_have_text(ssh)
    copy = access.locator("[data-copy='#ssh-2']")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == ssh[1]
    with page.expect_download() as download:
        page.click("[data-testid=kubeconfig]")
    assert download.value.suggested_filename == f"{now_block.public_id}.kubeconfig"
    assert Path(download.value.path()).read_text() == crypto.decrypt(now_block.access_secret)
    steps.shot(page, "access-copied")

    # --- Creates an API key (the password is asked again) and lists reservations with it ---
    page.click("nav.sidenav >> text=API keys")
    page.fill("#id_name", "CI runner")
    page.click("button:has-text('Create key')")
    if confirm_password_if_asked(page, PASSWORD, steps):
        page.fill("#id_name", "CI runner")  # a refused POST is not replayed: type it again
        page.click("button:has-text('Create key')")
    key = page.locator("#new-key").inner_text()
    assert re.fullmatch(r"hbk_\w+_\w+", key)
    expect(page.locator("[data-testid=keys] tbody tr")).to_have_count(1)
    expect(page.locator("[data-testid=keys] tbody td").nth(1)).to_have_text("reservations:read")
    steps.shot(page, "api-key")
    listed = requests.get(
        f"{url}/api/v1/reservations/", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert listed.status_code == 200
    rows = sorted(listed.json()["results"], key=lambda r: r["starts_at"])
    assert [
        (r["id"], r["state"], r["node_count"], r["gpu_model"], r["region"], r["price"])
        for r in rows
    ] == [
        (now_block.public_id, "active", 2, "h100", "us-east", "128.00"),
        (later.public_id, "scheduled", 2, "h100", "us-east", "768.00"),
    ]
    assert rows[1]["starts_at"] == f"{start:%Y-%m-%dT%H:%M:%SZ}"

    # --- Cancels the other reservation and sees the refund ---------------------------------
    page.click("nav.sidenav >> text=Reservations")
    listing = page.locator("[data-testid=reservations] tbody tr")
    expect(listing).to_have_count(2)
    page.click(f"text={later.public_id}")
    page.click("text=Cancel reservation")
    expect(page.locator("[data-testid=refund-quote]")).to_contain_text(
        "You paid $768.00. Canceling now refunds $384.00 (50%)"
    )
    page.fill("#id_reason", "The run moved to next month.")
    steps.shot(page, "cancel")
    page.click("button:has-text('Cancel reservation')")
    page.wait_for_url(f"{url}/o/{SLUG}/reservations/{later.public_id}/")
    expect(page.locator(".alert-success")).to_have_text(
        "Canceled. USD 384.00 will be refunded to the original payment method."
    )
    expect(page.locator("h1 .badge")).to_have_text("Canceled")
    until(
        lambda: Refund.objects.filter(status=Refund.Status.SUCCEEDED).exists(),
        "the refund went through",
    )
    page.click("nav.sidenav >> text=Billing")
    refunds = page.locator("[data-testid=refunds] tbody tr")
    expect(refunds).to_have_count(1)
    expect(refunds.locator("td").nth(2)).to_have_text("Cancellation refund per the policy.")
    expect(refunds.locator("td").nth(3)).to_have_text("Refunded")
    expect(refunds.locator("td").nth(4)).to_have_text("$384.00")
    paid = page.locator("[data-testid=payments] tbody tr", has_text=later.public_id)
    status, amount, refunded = (paid.locator(f"td:nth-child({n})") for n in (3, 4, 5))
    # The declined attempt's PaymentIntent was canceled at Stripe when the block was canceled
    # (settlement does that before it refunds), so nothing can pay for it any more.
    expect(status).to_have_text([re.compile("^Paid"), re.compile("^Canceled")])
    expect(amount).to_have_text(["$768.00", "$768.00"])
    expect(refunded).to_have_text(["$384.00", "—"])
    steps.shot(page, "refund")
    refund = Refund.objects.get()
    assert (refund.amount, refund.payment.reservation_id) == (Decimal("384.00"), later.pk)

    # --- Invites a teammate, who signs up from the e-mail and signs in ---------------------
    page.click("nav.sidenav >> text=Team")
    page.fill("#id_email", TEAMMATE)
    page.select_option("#id_role", "member")
    page.click("button:has-text('Send invitation')")
    if confirm_password_if_asked(page, PASSWORD, steps):
        page.fill("#id_email", TEAMMATE)
        page.select_option("#id_role", "member")
        page.click("button:has-text('Send invitation')")
    expect(page.locator(".alert-success")).to_have_text(f"Invitation sent to {TEAMMATE}.")
    expect(page.locator("[data-testid=invitations] tbody td").first).to_have_text(TEAMMATE)
    steps.shot(page, "invited")
    invitation = mail_to(TEAMMATE, f"Ada Lovelace invited you to {ORG_NAME} on Hyperblock")

    teammate = new_page()
    watch_console(teammate, errors)
    teammate.goto(link_in(invitation))
    expect(teammate.locator("h1")).to_have_text(f"Join {ORG_NAME}")
    teammate.fill("#id_full_name", "Grace Hopper")
    teammate.fill("#id_password", TEAMMATE_PASSWORD)
    steps.shot(teammate, "invitation")
    teammate.click("button:has-text('Create account and join')")
    teammate.wait_for_url(f"{url}/o/{SLUG}/")
    expect(teammate.locator(".alert-success")).to_have_text(f"Welcome! You joined {ORG_NAME}.")
    teammate.click("summary:has-text('Grace Hopper')")
    teammate.click("button:has-text('Sign out')")
    teammate.wait_for_url(f"{url}/login/")
    teammate.fill("#id_username", TEAMMATE)
    teammate.fill("#id_password", TEAMMATE_PASSWORD)
    teammate.click("button:has-text('Sign in')")
    teammate.wait_for_url(f"{url}/o/{SLUG}/")
    expect(teammate.locator(".page-head p")).to_have_text(
        "Your role: Member · Self-serve · Card, paid upfront"
    )
    teammate.click("nav.sidenav >> text=Reservations")
    expect(teammate.locator("[data-testid=reservations] tbody tr .badge")).to_have_text(
        ["Active", "Canceled"]
    )
    steps.shot(teammate, "teammate")
    assert sorted(Membership.objects.values_list("user__email", "role")) == [
        (EMAIL, "owner"),
        (TEAMMATE, "member"),
    ]

    # --- Sales approves invoice terms and a negotiated rate in the back office ------------
    # A sales colleague who set up an authenticator app earlier: the test reads it like the app.
    sales = UserFactory(email="sam@hyperblock.example", full_name="Sam Sales", is_staff=True)
    sales.groups.add(_staff_group(SALES))
    device = TOTPDevice.objects.create(user=sales, name="phone", confirmed=True)
    office = new_page()
    watch_console(office, errors)
    office.goto(f"{url}/admin/")
    office.wait_for_url(re.compile(r"/admin/login/"))
    office.fill("#id_username", sales.email)
    office.fill("#id_password", STAFF_PASSWORD)
    office.click("input[type=submit]")
    office.wait_for_url(re.compile(r"/admin/two-factor/"))
    office.fill("#id_code", totp_code(device))
    office.click("input[value='Sign in']")
    office.wait_for_url(f"{url}/admin/")
    steps.shot(office, "backoffice")

    office.goto(f"{url}/admin/accounts/organization/")
    office.fill("#searchbar", "Acme")
    office.press("#searchbar", "Enter")
    row = office.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td.field-terms_label")).to_have_text("Card")
    row.locator("input[name=_selected_action]").check()
    office.select_option("select[name=action]", "approve_invoice_terms")
    office.click("button[name=index]")
    office.fill("#id_credit_limit", "50000")
    office.fill("#id_payment_days", "30")
    office.fill("#id_reason", "Signed the enterprise agreement.")
    steps.shot(office, "approve-terms")
    office.click("input[value='Approve invoice terms']")
    expect(office.locator(".messagelist .success")).to_have_text(
        "Invoice terms approved for 1 organization."
    )
    expect(row.locator("td.field-terms_label")).to_have_text("Net 30, limit $50,000.00")

    office.goto(f"{url}/admin/capacity/negotiatedrate/")
    office.click("text=Add negotiated rate")
    office.click(".field-organization .select2-selection")
    office.fill(".select2-search__field", "Acme")
    office.click(f".select2-results__option:has-text('{ORG_NAME}')")
    office.select_option("#id_gpu_model", label="H100")
    office.select_option("#id_region", label="US East (us-east)")
    office.fill("#id_price_per_gpu_hour", "1.60")
    office.fill("#id_valid_from_0", f"{today:%Y-%m-%d}")
    office.fill("#id_valid_from_1", "00:00:00")
    until_day = today + timedelta(days=90)
    office.fill("#id_valid_until_0", f"{until_day:%Y-%m-%d}")
    office.fill("#id_valid_until_1", "00:00:00")
    office.fill("#id_reason", "Enterprise agreement: 20% off H100 in us-east.")
    steps.shot(office, "negotiated-rate")
    office.click("input[name=_save]")
    expect(office.locator(".messagelist .success")).to_contain_text("was added successfully")
    rate = NegotiatedRate.objects.get()
    assert (rate.organization_id, rate.price_per_gpu_hour, rate.created_by_id) == (
        organization.pk,
        Decimal("1.6000"),
        sales.pk,
    )
    organization.refresh_from_db()
    assert (organization.payment_terms, organization.payment_days, organization.credit_limit) == (
        "invoice",
        30,
        Decimal("50000.00"),
    )

    # --- The customer sees the new price and terms ---------------------------------------
    page.click("nav.sidenav >> text=Find capacity")
    page.select_option("#id_region", "us-east")
    page.fill("#id_node_count", "2")
    page.fill("#id_duration_hours", "24")
    page.click("button:has-text('Find capacity')")
    expect(exact.locator(".price")).to_have_text("$614.40")  # 2 x 8 x 24 x $1.60, was $768.00
    expect(exact.locator(".price + .muted")).to_have_text("$1.60 per GPU-hour · your rate")
    steps.shot(page, "negotiated-price")
    exact.locator("text=Select").click()
    expect(page.locator("[data-testid=quote-total]")).to_have_text("$614.40")
    expect(page.locator("[data-testid=quote]")).to_contain_text(
        "on your invoice terms it is confirmed at once"
    )
    page.click("nav.sidenav >> text=Billing")
    terms = page.locator(".stat-label:has-text('Payment terms') + .stat")
    expect(terms).to_have_text("Invoice, net 30")
    expect(terms.locator("+ .muted")).to_have_text("Credit limit $50,000.00")
    steps.shot(page, "invoice-terms")

    # --- The heatmap counts the running block, and the canceled one no longer -------------
    page.click("nav.sidenav >> text=Find capacity")
    page.click("text=Availability calendar")
    # The running 2-node block took the smaller fabric (best fit): 8 still fit in the other.
    expect(days.nth(0)).to_contain_text(" 8 free nodes in one fabric at the busiest hour")
    expect(days.nth(3)).to_contain_text(" 8 free nodes in one fabric at the busiest hour")
    steps.phone(page, "heatmap")
    days.nth(0).click()
    started = now_block.starts_at
    expect(hours.nth(started.hour)).to_have_text(f"{started:%H}:00 8 nodes free, past")
    steps.shot(page, "heatmap-booked")

    # --- Phone-sized views of the pages people check on the go ----------------------------
    page.click("nav.sidenav >> text=Overview")
    steps.phone(page, "dashboard")
    page.goto(f"{url}/o/{SLUG}/reservations/{now_block.public_id}/")
    steps.phone(page, "reservation")

    # Every e-mail the journey caused, each once.
    until(lambda: len(mail.outbox) >= 8, "every e-mail was sent")
    assert sorted((m.to[0], m.subject) for m in mail.outbox) == sorted(
        [
            (EMAIL, "Verify your e-mail address for Hyperblock"),
            (EMAIL, f"Reservation {later.public_id} is confirmed"),
            (EMAIL, f"Receipt for reservation {later.public_id}"),
            (EMAIL, f"Reservation {now_block.public_id} is confirmed"),
            (EMAIL, f"Receipt for reservation {now_block.public_id}"),
            (EMAIL, f"Your GPU block {now_block.public_id} is ready"),
            (EMAIL, f"Refund of 384.00 USD for {later.public_id}"),
            (TEAMMATE, f"Ada Lovelace invited you to {ORG_NAME} on Hyperblock"),
        ]
    )
    assert errors == []
