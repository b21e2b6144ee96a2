"""An axe-core scan of every page a customer or a staff member sees, at a laptop's and a phone's
width: no violation axe rates critical or serious, nor the heading-order and empty-table-header
findings it rates lower (they make tables and pages hard to follow with a screen reader).

SCREENS is the registry: each entry names the URL it covers and opens its page with the data it
needs. `test_every_page_route_is_scanned` walks the URL resolver, so a new portal page fails the
suite until it joins SCREENS or EXCLUDED (which says why the route shows no page of its own).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

import pytest
from axe_playwright_python.base import AXE_SCRIPT
from django.contrib.auth.tokens import default_token_generator
from django.test import Client
from django.urls import URLResolver, get_resolver
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import BrowserContext, Page, expect

from accounts.models import Organization, User
from accounts.permissions import Role
from accounts.services.memberships import invitation_create
from billing.models import Payment
from billing.services import extensions, payments
from capacity.models import Extension, Reservation
from capacity.provisioning import reservation_start
from tests.billing.conftest import card, held_reservation
from tests.billing.test_extensions import save_card
from tests.capacity.conftest import Catalog
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e]

WIDTHS = {"laptop": {"width": 1366, "height": 800}, "phone": {"width": 390, "height": 844}}
BLOCKING = {"critical", "serious"}
# Lower-rated rules that are held to zero as well: each was found on these pages once.
ALSO_BLOCKING = {"heading-order", "empty-table-header"}
QUERY = "gpu_model=h100&region=us-east&node_count=2&duration_hours=24"


# --- The data a page needs, made when a page first asks for it ----------------------------------
class World:
    def __init__(self, catalog: Catalog, organization: Organization, owner: User, api: str):
        self.catalog = catalog
        self.org = organization
        self.owner = owner
        self.api = api

    def org_url(self, path: str = "") -> str:
        return f"/o/{self.org.slug}/{path}"

    def reservation_url(self, reservation: Reservation, path: str = "") -> str:
        return self.org_url(f"reservations/{reservation.public_id}/{path}")

    @cached_property
    def held(self) -> Reservation:
        return held_reservation(self.org, self.owner, self.catalog)

    @cached_property
    def paid(self) -> Reservation:
        """Scheduled, paid by card, with a saved card and SLA-free history."""
        reservation = held_reservation(
            self.org, self.owner, self.catalog, start=self._next_hour() + timedelta(days=2)
        )
        payments.payment_by_card_create(
            reservation=reservation,
            actor=self.owner,
            payment_method_id=card(self.api),
            attempt_token="scan",
        )
        reservation.refresh_from_db()
        return reservation

    @cached_property
    def payment(self) -> Payment:
        return Payment.objects.get(reservation=self.paid, status=Payment.Status.SUCCEEDED)

    @cached_property
    def active(self) -> Reservation:
        """Paid, provisioned by the simulated data center, with its access details."""
        reservation = held_reservation(self.org, self.owner, self.catalog, nodes=1, length=4)
        payments.payment_by_card_create(
            reservation=reservation,
            actor=self.owner,
            payment_method_id=card(self.api),
            attempt_token="active",
        )
        reservation.refresh_from_db()
        assert reservation_start(reservation)  # tasks run inline: provisioned at once
        reservation.refresh_from_db()
        assert reservation.state == Reservation.State.ACTIVE
        return reservation

    @cached_property
    def extension(self) -> Extension:
        save_card(self.org, self.owner, self.api)
        started = extensions.extension_start(
            reservation=self.paid,
            actor=self.owner,
            hours=2,
            attempt_token="scan",
            collect=extensions.PAY_PAGE,
        )
        return started.extension

    @cached_property
    def invitation_token(self) -> str:
        _, token = invitation_create(
            organization=self.org, actor=self.owner, email="new@example.com", role=Role.MEMBER
        )
        return token

    @cached_property
    def staff(self) -> User:
        return UserFactory(email="staff@hyperblock.example", is_staff=True, is_superuser=True)

    def _next_hour(self):
        return timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)

    def reservations(self) -> None:
        """Rows in the lists: a held block and a paid one."""
        self.held, self.paid  # noqa: B018

    def invited(self) -> None:
        self.invitation_token  # noqa: B018


def sign_in(context: BrowserContext, base: str, user: User | None, **session: object) -> None:
    """Start the browser with `user`'s session cookie (none for a visitor)."""
    context.clear_cookies()
    if user is None:
        return
    client = Client()
    client.force_login(user)
    stored = client.session
    for key, value in session.items():
        stored[key] = value
    stored.save()
    context.add_cookies([{"name": "sessionid", "value": stored.session_key, "url": base}])


def as_staff(world: World, context: BrowserContext, base: str) -> None:
    device = TOTPDevice.objects.create(user=world.staff, name="app", confirmed=True)
    sign_in(context, base, world.staff, **{DEVICE_ID_SESSION_KEY: device.persistent_id})


# --- The registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Screen:
    """A page to scan: the URL name it covers, who looks at it, and how to get there."""

    route: str
    path: Callable[[World], str]
    who: str = "owner"  # "owner", "visitor" or "staff"
    ready: str = "main, #content"  # a selector shown once the page is complete
    prepare: Callable[[World], object] | None = None
    status: int = 200


def _verify_link(world: World) -> str:
    return "/verify/not-a-valid-token/"


def _reset_link(world: World) -> str:
    uid = urlsafe_base64_encode(force_bytes(world.owner.pk))
    return f"/password/reset/{uid}/{default_token_generator.make_token(world.owner)}/"


SCREENS: dict[str, Screen] = {
    # Visitors
    "front": Screen("home", lambda w: "/", who="visitor", ready="body"),
    "sign-up": Screen("signup", lambda w: "/signup/", who="visitor", ready="form"),
    "sign-in": Screen("login", lambda w: "/login/", who="visitor", ready="form"),
    "password-reset": Screen(
        "password-reset", lambda w: "/password/reset/", who="visitor", ready="form"
    ),
    "password-reset-sent": Screen(
        "password-reset-done", lambda w: "/password/reset/sent/", who="visitor"
    ),
    "password-reset-new": Screen(
        "password_reset_confirm", _reset_link, who="visitor", ready="form"
    ),
    "invitation": Screen(
        "invitation", lambda w: f"/invitations/{w.invitation_token}/", who="visitor", ready="form"
    ),
    # A signed-in customer
    "verify-failed": Screen("verify-email", _verify_link, status=400),
    "dashboard": Screen("dashboard", lambda w: w.org_url(), prepare=World.reservations),
    "search-results": Screen(
        "capacity-search",
        lambda w: w.org_url(f"capacity/?{QUERY}"),
        ready="[data-testid=offerings] [data-kind=exact]",
    ),
    "calendar-day": Screen(
        "capacity-calendar",
        lambda w: w.org_url("capacity/calendar/?gpu_model=h100&region=us-east"),
        ready="[data-testid=calendar][data-zoom=day]",
    ),
    "calendar-hour": Screen(
        "capacity-calendar",
        lambda w: w.org_url(
            f"capacity/calendar/?gpu_model=h100&region=us-east&week={timezone.now():%Y-%m-%d}"
        ),
        ready="[data-testid=calendar][data-zoom=hour]",
    ),
    "reservations": Screen(
        "reservation-list", lambda w: w.org_url("reservations/"), prepare=World.reservations
    ),
    "quote": Screen(
        "reservation-new",
        lambda w: w.org_url(f"reservations/new/?{QUERY}"),
        ready="[data-testid=quote-total]",
    ),
    "reservation-held": Screen("reservation-detail", lambda w: w.reservation_url(w.held)),
    "reservation-active": Screen(
        "reservation-detail",
        lambda w: w.reservation_url(w.active),
        ready="[data-testid=access]",
    ),
    "cancel": Screen("reservation-cancel", lambda w: w.reservation_url(w.paid, "cancel/")),
    "pay": Screen("pay", lambda w: w.reservation_url(w.held, "pay/"), ready="#card-element input"),
    "extend": Screen(
        "reservation-extend",
        lambda w: w.reservation_url(w.paid, "extend/?hours=6"),
        ready="[data-testid=extend-pay-card]",
    ),
    "extension-pay": Screen(
        "extension-pay",
        lambda w: w.reservation_url(w.paid, f"extensions/{w.extension.public_id}/pay/"),
        ready="#card-element input",
    ),
    "billing": Screen("billing", lambda w: w.org_url("billing/"), prepare=World.reservations),
    "card-add": Screen("card-add", lambda w: w.org_url("billing/cards/new/")),
    "receipt": Screen(
        "receipt", lambda w: w.org_url(f"billing/receipts/{w.payment.public_id}/"), ready="h1"
    ),
    "usage": Screen("usage", lambda w: w.org_url("usage/")),
    "api-keys": Screen("api-keys", lambda w: w.org_url("api-keys/")),
    "team": Screen("team", lambda w: w.org_url("team/"), prepare=World.invited),
    "organization-settings": Screen("organization-settings", lambda w: w.org_url("settings/")),
    "organization-new": Screen("organization-create", lambda w: "/organizations/new/"),
    "profile": Screen("profile", lambda w: "/account/"),
    "confirm-password": Screen(
        "confirm-password",
        lambda w: f"/account/confirm-password/?next={w.org_url('api-keys/')}",
        ready="form",
    ),
    # The back office
    "admin-index": Screen("admin:index", lambda w: "/admin/", who="staff", ready="#content"),
    "admin-reservations": Screen(
        "admin:capacity_reservation_changelist",
        lambda w: "/admin/capacity/reservation/",
        who="staff",
        ready="#result_list",
        prepare=World.reservations,
    ),
}

# Routes that show no page of their own to scan, each with why.
EXCLUDED = {
    "healthz": "a plain-text probe for the load balancer",
    "readyz": "a plain-text probe for the load balancer",
    "metrics": "Prometheus text for the monitoring system",
    "stripe-webhook": "JSON for Stripe's callbacks",
    "logout": "POST only; redirects to the sign-in page",
    "signup-slug": "a fragment of the sign-up form (scanned with sign-up)",
    "verify-email-resend": "POST only; redirects back",
    "api-key-action": "POST only; redirects to the API keys page",
    "team-invite": "POST only; redirects to the team page",
    "invitation-revoke": "POST only; redirects to the team page",
    "member-role": "POST only; redirects to the team page",
    "member-remove": "POST only; redirects to the team page",
    "reservation-status": "the live fragment of the reservation page (scanned with it)",
    "reservation-kubeconfig": "a file download",
    "reservation-quote-accept": "POST only; redirects to the reservation",
    "pay-card": "JSON for the payment page's script",
    "pay-saved": "POST only; redirects to the reservation",
    "extension-pay-card": "JSON for the payment page's script",
    "payment-status": "the status fragment of the payment page (scanned with it)",
    "card-default": "POST only; redirects to billing",
    "card-remove": "POST only; redirects to billing",
}
# The API has its own contract tests; the back office's many generated admin pages are
# represented by its index and a change list.
NOT_WALKED = ("api/", "admin/", "static/")


# --- The scan -------------------------------------------------------------------------------
def blocking(violations: list[dict]) -> list[dict]:
    return [v for v in violations if v["impact"] in BLOCKING or v["id"] in ALSO_BLOCKING]


def report(name: str, url: str, violations: list[dict]) -> str:
    lines = [f"{name} ({url}): {len(violations)} accessibility violation(s)"]
    for violation in violations:
        lines.append(f"- {violation['id']} ({violation['impact']}): {violation['help']}")
        for node in violation["nodes"]:
            targets = " ".join(" >> ".join(t) if isinstance(t, list) else t for t in node["target"])
            lines.append(f"    {targets}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def contexts(browser) -> Iterator[dict[str, BrowserContext]]:
    """One browser context (and page) per width for the whole scan; each test swaps the
    session cookie for the person it looks as."""
    made = {}
    for name, size in WIDTHS.items():
        context = browser.new_context(viewport=size)
        context.add_init_script(script=AXE_SCRIPT)
        context.new_page().set_default_timeout(20_000)
        made[name] = context
    yield made
    for context in made.values():
        context.close()


@pytest.fixture
def world(catalog, organization, owner, stripe_api, settings) -> World:
    settings.STRIPE_JS_URL = f"{stripe_api}/js.stripe.com/v3/"
    return World(catalog, organization, owner, stripe_api)


def open_screen(screen: Screen, world: World, context: BrowserContext, base: str) -> Page:
    if screen.prepare is not None:
        screen.prepare(world)
    if screen.who == "staff":
        as_staff(world, context, base)
    elif screen.who == "owner":
        sign_in(context, base, world.owner)
    else:
        sign_in(context, base, None)
    page = context.pages[0]
    url = base + screen.path(world)
    response = page.goto(url)
    assert response is not None, url
    assert response.status == screen.status, f"{url} answered {response.status}"
    expect(page.locator(screen.ready).first).to_be_attached()
    expect(page.locator(".htmx-request")).to_have_count(0)
    return page


CASES = [
    pytest.param(name, width, id=f"{name}-{width}") for name in SCREENS for width in WIDTHS
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("name", "width"), CASES)
def test_no_serious_accessibility_violations(name, width, world, contexts, live_server):
    screen = SCREENS[name]
    page = open_screen(screen, world, contexts[width], live_server.url)
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    found = blocking(results["violations"])
    if found:
        pytest.fail(report(f"{name}-{width}", page.url, found), pytrace=False)


def _page_routes() -> set[str]:
    names: set[str] = set()

    def walk(patterns: list, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if route.startswith(NOT_WALKED):
                continue
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            else:
                names.add(pattern.name or route)

    walk(get_resolver().url_patterns, "")
    return names


def test_every_page_route_is_scanned():
    routes = _page_routes()
    scanned = {screen.route for screen in SCREENS.values() if not screen.route.startswith("admin:")}
    assert sorted(routes - scanned - EXCLUDED.keys()) == [], "pages missing from SCREENS"
    assert sorted((scanned | EXCLUDED.keys()) - routes) == [], "entries for routes that are gone"
    assert sorted(scanned & EXCLUDED.keys()) == [], "scanned and excluded at once"
