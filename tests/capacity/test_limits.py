"""What one organization may hold (capacity/limits.py): open holds, their node-hours, nodes in
live reservations, the hold rate; sales raising them; and terms read from the locked row."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache

from accounts import api_keys
from accounts.api_keys.authentication import api_key_authenticate, cache_key
from accounts.api_keys.format import digest
from accounts.models import Organization
from backoffice.roles import FINANCE, SALES
from billing.models import Invoice
from billing.services import terms
from capacity import demo, extensions, lifecycle, limits, quotes
from capacity.models import Extension, Reservation
from capacity.windows import Window
from core.errors import NotAllowed, ServiceError
from core.models import AuditEvent
from tests.api.test_api import BLOCK, api, key_for
from tests.backoffice.conftest import make_staff, verified_client
from tests.capacity.test_views import BLOCK as FORM
from tests.capacity.test_views import url
from tests.conftest import client_for

from .conftest import NEXT_HOUR, hours
from .test_reservations import reserve, scheduled

pytestmark = pytest.mark.django_db
S = Reservation.State
NONE = {"open_holds": None, "held_node_hours": None, "live_nodes": None}
RAISE = "To go beyond, ask your account manager (sales) to raise it."


@pytest.fixture
def capped(settings):
    """Set the self-serve tier's limits: `capped(open_holds=2)`."""

    def set_limits(**values: int | None) -> None:
        settings.CAPACITY_LIMITS = {"self_serve": {**NONE, **values}, "enterprise": dict(NONE)}

    return set_limits


def refused(call, code: str) -> str:
    with pytest.raises(limits.HoldLimitExceeded) as caught:
        call()
    assert (caught.value.code, caught.value.status) == (code, 409)
    return caught.value.message


# --- Open holds ---------------------------------------------------------------------------------
def test_a_third_hold_past_a_limit_of_two_is_refused_and_nothing_is_held(
    catalog, organization, owner, capped
):
    capped(open_holds=2)
    reserve(organization, owner, catalog, nodes=1)
    reserve(organization, owner, catalog, nodes=1, region=catalog.west)
    message = refused(lambda: reserve(organization, owner, catalog, nodes=1), "open_holds_limit")
    assert message == (
        f"{organization.name} may have at most 2 open holds (the Self-serve tier's limit); it "
        f"has 2 waiting for payment. Pay for one or let it lapse first. {RAISE}"
    )
    assert Reservation.objects.count() == 2
    assert AuditEvent.objects.filter(action="reservation.created").count() == 2


def test_holds_paid_or_lapsed_make_room(catalog, organization, owner, capped, frozen_clock):
    capped(open_holds=1)
    first = reserve(organization, owner, catalog, nodes=1)
    lifecycle.reservation_transition(reservation=first, to=S.SCHEDULED, actor=None)  # paid
    second = reserve(organization, owner, catalog, nodes=1)
    refused(lambda: reserve(organization, owner, catalog, nodes=1), "open_holds_limit")
    frozen_clock.shift(timedelta(minutes=16))  # the hold lapsed; no sweep has run yet
    third = reserve(organization, owner, catalog, nodes=1, start=NEXT_HOUR + hours(1))
    second.refresh_from_db()
    assert (second.state, third.state) == (S.EXPIRED, S.HELD)


def test_another_organizations_holds_do_not_count(
    catalog, organization, owner, other_organization, capped
):
    capped(open_holds=1)
    reserve(organization, owner, catalog, nodes=1)
    other_owner = other_organization.memberships.get().user
    assert reserve(other_organization, other_owner, catalog, nodes=1).state == S.HELD


def test_held_node_hours_are_capped(catalog, organization, owner, capped):
    capped(held_node_hours=100)
    reserve(organization, owner, catalog, nodes=2, length=24)  # 48 node-hours
    reserve(organization, owner, catalog, nodes=1, length=52, region=catalog.west)  # 100
    message = refused(
        lambda: reserve(organization, owner, catalog, nodes=1, length=1), "held_node_hours_limit"
    )
    assert message == (
        f"{organization.name} may have at most 100 node-hours on hold (the Self-serve tier's "
        f"limit); 100 are held now and this would hold 1 more. {RAISE}"
    )


# --- Live nodes ---------------------------------------------------------------------------------
def test_nodes_in_live_reservations_are_capped_whether_held_or_paid(
    catalog, organization, owner, capped
):
    capped(live_nodes=5)
    scheduled(organization, owner, catalog, nodes=3)
    reserve(organization, owner, catalog, nodes=2, region=catalog.west)
    message = refused(lambda: reserve(organization, owner, catalog, nodes=1), "live_nodes_limit")
    assert message == (
        f"{organization.name} may have at most 5 nodes in live reservations (the Self-serve "
        f"tier's limit); it has 5 and this would add 1. {RAISE}"
    )


def test_on_invoice_terms_only_the_live_nodes_cap_applies(catalog, organization, owner, capped):
    """Confirmed at once, an invoiced reservation is no hold (its credit line caps it)."""
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", credit_limit=Decimal("100000.00")
    )
    organization.refresh_from_db()
    capped(open_holds=0, held_node_hours=0, live_nodes=4)
    first = reserve(organization, owner, catalog, nodes=4)
    assert first.state == S.SCHEDULED
    refused(lambda: reserve(organization, owner, catalog, nodes=1), "live_nodes_limit")


# --- Raised by sales ----------------------------------------------------------------------------
def test_an_organizations_own_limit_replaces_its_tiers(catalog, organization, owner, capped):
    capped(open_holds=1)
    sales = make_staff(SALES)
    limits.organization_limits_set(
        organization=organization, actor=sales, changes={"max_open_holds": 2}, reason="Pilot"
    )
    reserve(organization, owner, catalog, nodes=1)
    reserve(organization, owner, catalog, nodes=1)
    message = refused(lambda: reserve(organization, owner, catalog, nodes=1), "open_holds_limit")
    assert message.startswith(f"{organization.name} may have at most 2 open holds (its own limit)")
    event = AuditEvent.objects.get(action="organization.limits_changed")
    assert (event.actor, event.data, event.reason) == (
        sales,
        {"changes": {"max_open_holds": [None, 2]}},
        "Pilot",
    )
    limits.organization_limits_set(
        organization=organization, actor=sales, changes={"max_open_holds": None}
    )
    organization.refresh_from_db()
    assert limits.organization_limits(organization) == limits.Limits(1, None, None)


def test_the_enterprise_tier_has_its_own_limits(organization, settings):
    settings.CAPACITY_LIMITS = {
        "self_serve": {"open_holds": 5, "held_node_hours": 10, "live_nodes": 32},
        "enterprise": {"open_holds": 25, "held_node_hours": None, "live_nodes": 512},
    }
    organization.tier = "enterprise"
    assert limits.organization_limits(organization) == limits.Limits(25, None, 512)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_open_holds": -1}, "Give a limit as a whole number from 0"),
        ({"max_live_nodes": "9"}, "Give a limit as a whole number from 0"),
        ({"max_live_nodes": True}, "Give a limit as a whole number from 0"),
        ({"credit_limit": 9}, "These are not capacity limits: credit_limit."),
    ],
)
def test_bad_limits_are_refused_and_nothing_changes(organization, changes, message):
    with pytest.raises(ServiceError, match=message):
        limits.organization_limits_set(
            organization=organization, actor=make_staff(SALES), changes=changes
        )
    organization.refresh_from_db()
    assert (organization.max_open_holds, organization.max_live_nodes) == (None, None)
    assert not AuditEvent.objects.filter(action="organization.limits_changed").exists()


def test_only_staff_who_change_organizations_set_limits(organization):
    with pytest.raises(NotAllowed):
        limits.organization_limits_set(
            organization=organization, actor=make_staff(FINANCE), changes={"max_open_holds": 9}
        )


def test_sales_raises_a_limit_in_the_back_office(organization):
    client = verified_client(make_staff(SALES))
    change = f"/admin/accounts/organization/{organization.pk}/change/"
    page = client.get(change)
    assert (
        "open holds: none; node-hours on hold: none; nodes in live reservations: none"
        in page.content.decode()  # the test settings' tiers
    )
    form = page.context["adminform"].form
    data = {name: form.initial.get(name) or "" for name in form.fields}
    data.update(
        max_live_nodes="96",
        **{f"{p}-{k}": v for p in ("memberships", "api_keys")
           for k, v in {"TOTAL_FORMS": 0, "INITIAL_FORMS": 0}.items()},
    )  # fmt: skip
    response = client.post(change, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    organization.refresh_from_db()
    assert (organization.max_live_nodes, organization.max_open_holds) == (96, None)
    event = AuditEvent.objects.get(action="organization.limits_changed")
    assert event.data == {"changes": {"max_live_nodes": [None, 96]}}


# --- Quotes and extensions ----------------------------------------------------------------------
def test_sales_quotes_are_not_held_to_the_limits(catalog, organization, owner, capped):
    capped(open_holds=0, live_nodes=0)
    quote = quotes.quote_create(
        organization=organization, actor=make_staff(SALES), gpu_model=catalog.h100,
        region=catalog.east, node_count=2, window=Window(NEXT_HOUR, NEXT_HOUR + hours(24)),
        valid_for=timedelta(days=2),
    )  # fmt: skip
    assert quote.state == S.HELD


def test_an_extension_hold_counts_as_a_hold(catalog, organization, owner, capped):
    block = scheduled(organization, owner, catalog, nodes=2)
    reserve(organization, owner, catalog, nodes=1, region=catalog.west)
    capped(open_holds=1)
    message = refused(
        lambda: extensions.extension_hold(reservation=block, actor=owner, hours=4),
        "open_holds_limit",
    )
    assert "it has 1 waiting for payment" in message
    capped(held_node_hours=30)  # the west hold has 24; 4 more hours of 2 nodes make 32
    refused(
        lambda: extensions.extension_hold(reservation=block, actor=owner, hours=4),
        "held_node_hours_limit",
    )
    assert not Extension.objects.exists()
    capped(held_node_hours=32)
    extensions.extension_hold(reservation=block, actor=owner, hours=4)
    message = refused(
        lambda: reserve(organization, owner, catalog, nodes=1), "held_node_hours_limit"
    )
    assert "32 are held now and this would hold 24 more" in message


def test_staff_extension_holds_are_not_held_to_the_limits(catalog, organization, owner, capped):
    block = scheduled(organization, owner, catalog, nodes=2)
    capped(open_holds=0)
    held = extensions.extension_hold(reservation=block, actor=owner, hours=4, staff=True)
    assert held.state == Extension.State.HELD


# --- Rate ---------------------------------------------------------------------------------------
def test_holds_are_rate_limited_per_organization_and_minute(
    catalog, organization, owner, other_organization, settings, frozen_clock
):
    settings.CAPACITY_HOLD_RATE_PER_MINUTE = 2
    reserve(organization, owner, catalog, nodes=1)
    reserve(organization, owner, catalog, nodes=1)
    with pytest.raises(limits.HoldRateLimited) as caught:
        reserve(organization, owner, catalog, nodes=1)
    # The clock stands at 09:30:00 exactly: the whole minute is left.
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        429,
        "hold_rate_limited",
        60,
    )
    assert caught.value.message == (
        f"{organization.name} may place at most 2 holds a minute; try again in 60 seconds. "
        "If you need more, ask your account manager (sales) to raise it."
    )
    assert Reservation.objects.count() == 2
    other_owner = other_organization.memberships.get().user
    reserve(other_organization, other_owner, catalog, nodes=1)  # its own count
    frozen_clock.shift(timedelta(minutes=1))
    reserve(organization, owner, catalog, nodes=1)
    assert Reservation.objects.filter(organization=organization).count() == 3


def test_a_repeated_form_is_not_counted_again(catalog, organization, owner, settings):
    settings.CAPACITY_HOLD_RATE_PER_MINUTE = 1
    first = reserve(organization, owner, catalog, nodes=1, request_token="same")
    assert reserve(organization, owner, catalog, nodes=1, request_token="same") == first


# --- What the customer sees ---------------------------------------------------------------------
def test_the_api_answers_409_with_the_limit_and_429_for_the_rate(
    catalog, organization, owner, capped, settings
):
    key = key_for(organization, owner)
    capped(open_holds=1)
    post = api(key).post
    assert post("/api/v1/reservations/", BLOCK, content_type="application/json").status_code == 201
    response = post("/api/v1/reservations/", BLOCK, content_type="application/json")
    assert response.status_code == 409
    assert response.json()["error"] == {
        "type": "conflict",
        "code": "open_holds_limit",
        "message": f"{organization.name} may have at most 1 open hold (the Self-serve tier's "
        f"limit); it has 1 waiting for payment. Pay for one or let it lapse first. {RAISE}",
        "param": None,
    }
    capped()
    settings.CAPACITY_HOLD_RATE_PER_MINUTE = 1
    assert post("/api/v1/reservations/", BLOCK, content_type="application/json").status_code == 201
    response = post("/api/v1/reservations/", BLOCK, content_type="application/json")
    assert response.status_code == 429
    assert (response.json()["error"]["type"], response.json()["error"]["code"]) == (
        "rate_limited",
        "hold_rate_limited",
    )
    assert response["Retry-After"] == "60"
    assert response.json()["error"]["message"] == (
        f"{organization.name} may place at most 1 hold a minute; try again in 60 seconds. If "
        "you need more, ask your account manager (sales) to raise it."
    )


def test_the_portal_says_what_the_limit_is(catalog, organization, owner, capped):
    capped(live_nodes=1)
    page = client_for(owner).post(
        url("reservation-new", organization), {**FORM, "request_token": "t"}
    )
    assert "may have at most 1 node in live reservations" in page.content.decode()
    assert "ask your account manager (sales) to raise it" in page.content.decode()
    assert not Reservation.objects.exists()


# --- Terms read from the locked row -------------------------------------------------------------
def test_a_switch_to_card_terms_under_way_is_not_confirmed_on_invoice(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    """The request loaded the organization on invoice terms; sales switched it to card before
    the reservation was written. The row, not the instance, decides: it is held for payment."""
    sales = make_staff(SALES)
    terms.invoice_terms_approve(
        organization=organization, actor=sales, credit_limit="100000", payment_days=30
    )
    loaded = Organization.objects.get(pk=organization.pk)
    assert loaded.on_invoice_terms
    terms.card_terms_set(organization=Organization.objects.get(pk=organization.pk), actor=sales)
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(loaded, owner, catalog, nodes=2)
    assert reservation.state == S.HELD
    assert reservation.organization.on_invoice_terms is False
    assert not Invoice.objects.exists()


def test_an_approval_under_way_confirms_on_invoice(catalog, organization, owner):
    loaded = Organization.objects.get(pk=organization.pk)
    terms.invoice_terms_approve(
        organization=organization, actor=make_staff(SALES), credit_limit="100000", payment_days=45
    )
    reservation = reserve(loaded, owner, catalog, nodes=2)
    assert reservation.state == S.SCHEDULED
    transition = AuditEvent.objects.get(action="reservation.transition")
    assert transition.reason == "Confirmed on invoice terms (net 45)."


def test_changing_terms_drops_the_organizations_cached_keys(
    organization, owner, django_capture_on_commit_callbacks
):
    _, raw = api_keys.api_key_create(
        organization=organization, actor=owner, name="ci", scopes=["reservations:read"]
    )
    api_key_authenticate(raw)
    assert cache.get(cache_key(digest(raw))) is not None
    sales = make_staff(SALES)
    with django_capture_on_commit_callbacks(execute=True):
        terms.invoice_terms_approve(
            organization=organization, actor=sales, credit_limit="5000", payment_days=30
        )
    assert cache.get(cache_key(digest(raw))) is None
    assert api_key_authenticate(raw).organization.on_invoice_terms
    with django_capture_on_commit_callbacks(execute=True):
        terms.card_terms_set(organization=organization, actor=sales)
    assert cache.get(cache_key(digest(raw))) is None
    assert not api_key_authenticate(raw).organization.on_invoice_terms


def test_the_demos_busy_customer_is_not_held_to_the_limits(catalog, capped, settings):
    capped(open_holds=1, held_node_hours=1, live_nodes=1)
    settings.CAPACITY_HOLD_RATE_PER_MINUTE = 1
    assert demo.load_bookings("demo-password") > 2
