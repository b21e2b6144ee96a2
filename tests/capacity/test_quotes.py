"""Quotes: sales holds nodes for a customer at a price; the customer pays, accepts or declines."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Organization
from accounts.permissions import Role
from backoffice.roles import FINANCE, OPERATIONS, SALES
from billing.models import Invoice
from billing.services import payments, settlement
from capacity import quotes, rates, services
from capacity.models import Allocation, Reservation
from capacity.windows import Window
from core.errors import Conflict, NotAllowed, NotFound, ServiceError
from core.models import AuditEvent
from tests.backoffice.conftest import make_staff
from tests.billing.conftest import card, localstripe_url, stripe_api  # noqa: F401
from tests.billing.test_invoices_and_disputes import fake_stripe_invoices  # noqa: F401
from tests.conftest import client_for, member_of

from .conftest import NOW, hours

S = Reservation.State
START = datetime(2026, 12, 10, 0, 0, tzinfo=UTC)
WINDOW = Window(START, START + hours(24))

pytestmark = pytest.mark.django_db


def quote(org, catalog, *, actor=None, nodes=2, window=WINDOW, price="1.85", days=7, note="Q4"):
    return quotes.quote_create(
        organization=org,
        actor=actor or make_staff(SALES),
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=nodes,
        window=window,
        price_per_gpu_hour=price,
        valid_for=timedelta(days=days),
        note=note,
    )


def nothing_held() -> None:
    assert Reservation.objects.count() == 0
    assert Allocation.objects.count() == 0
    assert AuditEvent.objects.filter(action="reservation.quoted").count() == 0


def on_invoice(org: Organization, days: int = 45) -> None:
    Organization.objects.filter(pk=org.pk).update(
        payment_terms="invoice", payment_days=days, credit_limit=Decimal("100000")
    )
    org.refresh_from_db()


# --- Making quotes ----------------------------------------------------------------------------
def test_sales_holds_nodes_at_the_quoted_price(catalog, organization):
    sales = make_staff(SALES)
    reservation = quote(organization, catalog, actor=sales, note="As agreed on the call.")
    assert (reservation.state, reservation.hold_expires_at) == (S.HELD, NOW + timedelta(days=7))
    assert (reservation.quoted_by, reservation.created_by, reservation.quote_note) == (
        sales,
        None,
        "As agreed on the call.",
    )
    assert (reservation.price_source, reservation.price_per_gpu_hour, reservation.total) == (
        "quote",
        Decimal("1.85"),
        Decimal("710.40"),
    )
    assert reservation.price_lines == [
        {"description": "2 × 8 H100 × 24 h at the quoted $1.85/GPU-h", "amount": "710.40"}
    ]
    assert reservation.allocations.count() == 2
    event = AuditEvent.objects.get(action="reservation.quoted")
    assert (event.actor, event.actor_kind, event.organization, event.reason) == (
        sales,
        "staff",
        organization,
        "As agreed on the call.",
    )
    assert event.data == {
        "to": "held",
        "total": "710.40",
        "currency": "usd",
        "price_source": "quote",
        "price_per_gpu_hour": "1.85",
        "valid_until": (NOW + timedelta(days=7)).isoformat(),
    }


def test_without_a_price_the_quote_uses_the_customers_negotiated_rate(catalog, organization):
    sales = make_staff(SALES)
    rates.negotiated_rate_create(
        organization=organization, actor=sales, gpu_model=catalog.h100, region=None,
        price_per_gpu_hour="1.50", valid_from=NOW, valid_until=NOW + timedelta(days=60),
    )  # fmt: skip
    reservation = quote(organization, catalog, actor=sales, price="")
    assert (reservation.price_source, reservation.total) == ("negotiated", Decimal("576.00"))


def test_a_quote_on_invoice_terms_waits_for_the_customer(catalog, organization):
    on_invoice(organization)
    reservation = quote(organization, catalog)
    reservation.refresh_from_db()
    assert reservation.state == S.HELD
    assert Invoice.objects.count() == 0


def test_the_validity_ends_at_the_start_at_the_latest(catalog, organization):
    start = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    reservation = quote(organization, catalog, window=Window(start, start + hours(8)), days=14)
    assert reservation.hold_expires_at == start
    preview = quotes.quote_preview(
        organization=organization, gpu_model=catalog.h100, region=catalog.east, node_count=1,
        window=Window(start, start + hours(8)), valid_for=timedelta(days=14),
    )  # fmt: skip
    assert (preview.valid_until, preview.capped_at_start, preview.free_nodes) == (start, True, 8)
    assert (preview.price.total, preview.standard.total) == (Decimal("128.00"), Decimal("128.00"))


@pytest.mark.parametrize(
    ("kwargs", "message", "param"),
    [
        ({"days": 15}, "A quote is valid for between 1 hour and 14 days.", "valid_days"),
        ({"days": 0}, "A quote is valid for between 1 hour and 14 days.", "valid_days"),
        ({"price": "0"}, "The price per GPU-hour must be more than 0.", "price_per_gpu_hour"),
        ({"price": "two"}, "Give the price per GPU-hour as an amount, e.g. 1.85.",
         "price_per_gpu_hour"),
        ({"nodes": 65}, "Reserve between 1 and 64 nodes at a time.", "node_count"),
        ({"note": "x" * 2001}, "Keep the note to 2000 characters.", "note"),
        ({"window": Window(NOW, NOW + hours(4), starts_on_payment=True)},
         "Give the quote a start time: the customer needs to know when the block runs.",
         "starts_at"),
    ],
)  # fmt: skip
def test_bad_quotes_are_refused_and_hold_nothing(catalog, organization, kwargs, message, param):
    with pytest.raises(ServiceError) as refused:
        quote(organization, catalog, **kwargs)
    assert (refused.value.message, refused.value.param) == (message, param)
    nothing_held()


def test_no_quote_for_a_suspended_organization(catalog, organization):
    Organization.objects.filter(pk=organization.pk).update(status="suspended")
    organization.refresh_from_db()
    with pytest.raises(NotAllowed, match="is suspended"):
        quote(organization, catalog)
    nothing_held()


@pytest.mark.parametrize("group", [OPERATIONS, FINANCE, None])
def test_only_sales_makes_quotes(catalog, organization, group):
    with pytest.raises(NotAllowed, match="You are not allowed to make quotes."):
        quote(organization, catalog, actor=make_staff(group))
    nothing_held()


def test_a_customer_cannot_make_a_quote_for_themselves(catalog, organization, owner):
    with pytest.raises(NotAllowed):
        quote(organization, catalog, actor=owner)
    nothing_held()


def test_quotes_share_the_pool_lock_and_never_overbook(catalog, organization, owner):
    quote(organization, catalog, nodes=8)  # all of east-b
    with pytest.raises(services.SoldOut):
        quote(organization, catalog, nodes=5)  # east-a has 4
    with pytest.raises(services.SoldOut):
        services.reservation_create(
            organization=organization, user=owner, gpu_model=catalog.h100, region=catalog.east,
            node_count=5, window=WINDOW,
        )  # fmt: skip
    assert Reservation.objects.count() == 1
    assert Allocation.objects.filter(released_at__isnull=True).count() == 8


def test_an_unanswered_quote_expires_at_the_end_of_its_validity(
    catalog, organization, frozen_clock
):
    reservation = quote(organization, catalog, days=2)
    frozen_clock.move_to(NOW + timedelta(days=2) - timedelta(seconds=1))
    assert services.lapsed_holds_expire() == 0
    frozen_clock.move_to(NOW + timedelta(days=2))
    assert services.lapsed_holds_expire() == 1
    reservation.refresh_from_db()
    assert reservation.state == S.EXPIRED
    assert Allocation.objects.filter(released_at__isnull=True).count() == 0


# --- The customer's answer --------------------------------------------------------------------
def test_accepting_on_invoice_terms_schedules_and_invoices(
    catalog, organization, owner, fake_stripe_invoices, django_capture_on_commit_callbacks
):
    on_invoice(organization, days=45)
    reservation = quote(organization, catalog)
    with django_capture_on_commit_callbacks(execute=True):
        accepted = quotes.quote_accept(reservation=reservation, actor=owner)
    assert accepted.state == S.SCHEDULED
    invoice = Invoice.objects.get(reservation=reservation)
    assert (invoice.amount, invoice.currency, invoice.status) == (Decimal("710.40"), "usd", "open")
    calls, _ = fake_stripe_invoices
    assert calls[0][2]["days_until_due"] == "45"
    event = AuditEvent.objects.get(action="reservation.transition", data__to="scheduled")
    assert (event.actor, event.reason) == (owner, "Quote accepted on invoice terms (net 45).")


def test_a_card_customer_pays_a_quote_with_the_ordinary_payment(
    catalog, organization, owner, stripe_api
):
    reservation = quote(organization, catalog)
    with pytest.raises(Conflict) as refused:
        quotes.quote_accept(reservation=reservation, actor=owner)
    assert (
        refused.value.message
        == f"{organization.name} pays by card: pay $710.40 to confirm this quote."
    )
    payment = payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(stripe_api),
        attempt_token="quote-1",
    )  # fmt: skip
    assert (payment.status, payment.amount) == ("succeeded", Decimal("710.40"))
    reservation.refresh_from_db()
    assert reservation.state == S.SCHEDULED


@pytest.mark.parametrize("role", [Role.BILLING])
def test_roles_that_cannot_reserve_cannot_accept(catalog, organization, role):
    on_invoice(organization)
    reservation = quote(organization, catalog)
    with pytest.raises(NotAllowed):
        quotes.quote_accept(reservation=reservation, actor=member_of(organization, role))
    reservation.refresh_from_db()
    assert reservation.state == S.HELD


def test_another_organizations_member_cannot_accept(catalog, organization, other_organization):
    on_invoice(organization)
    reservation = quote(organization, catalog)
    with pytest.raises(NotFound):
        quotes.quote_accept(
            reservation=reservation, actor=member_of(other_organization, Role.OWNER)
        )
    reservation.refresh_from_db()
    assert reservation.state == S.HELD


def test_an_expired_or_ordinary_reservation_cannot_be_accepted(
    catalog, organization, owner, frozen_clock
):
    on_invoice(organization)
    reservation = quote(organization, catalog, days=1)
    frozen_clock.move_to(NOW + timedelta(days=1))
    with pytest.raises(Conflict) as refused:
        quotes.quote_accept(reservation=reservation, actor=owner)
    assert refused.value.message == (
        "This quote was valid until Wed 2 Dec 2026, 09:30 UTC. Ask your account manager for a "
        "new one."
    )
    reservation.refresh_from_db()
    assert reservation.state == S.HELD
    ordinary = services.reservation_create(
        organization=organization, user=owner, gpu_model=catalog.h100, region=catalog.east,
        node_count=1, window=WINDOW,
    )  # fmt: skip
    with pytest.raises(Conflict, match="This reservation is not a quote."):
        quotes.quote_accept(reservation=ordinary, actor=owner)


# --- The portal -------------------------------------------------------------------------------
def test_the_customer_sees_the_quote_in_the_list_and_the_detail(catalog, organization, owner):
    sales = make_staff(SALES)
    sales.full_name = "Dana Reyes"
    sales.save()
    reservation = quote(organization, catalog, actor=sales, note="Valid for the Q4 launch.")
    client = client_for(owner)
    listing = client.get(f"/o/{organization.slug}/reservations/").content.decode()
    assert (
        '<div class="cell-sub" data-testid="quote-from">Quote from Dana Reyes · valid until '
        "Tue 8 Dec 2026, 09:30 UTC</div>"
    ) in listing
    page = client.get(f"/o/{organization.slug}/reservations/{reservation.public_id}/")
    html = page.content.decode()
    assert "<h2>Quote from Dana Reyes</h2>" in html
    assert '<p class="quote-note">Valid for the Q4 launch.</p>' in html
    assert "<dt>Price</dt><dd>$710.40 ($1.85/GPU-h, quoted)</dd>" in html
    assert "<strong>Tue 8 Dec 2026, 09:30 UTC</strong>" in html
    assert 'data-testid="pay-link">Pay $710.40</a>' in html
    assert "Decline quote</a>" in html
    assert "accept-quote" not in html  # card terms: paid, not accepted


def test_a_member_of_another_organization_never_sees_the_quote(
    catalog, organization, other_organization
):
    reservation = quote(organization, catalog)
    stranger = client_for(member_of(other_organization, Role.OWNER))
    slug = other_organization.slug
    assert b"quote-from" not in stranger.get(f"/o/{slug}/reservations/").content
    assert stranger.get(f"/o/{slug}/reservations/{reservation.public_id}/").status_code == 404
    response = stranger.post(f"/o/{slug}/reservations/{reservation.public_id}/accept/")
    assert response.status_code == 404
    own_slug_response = stranger.get(f"/o/{organization.slug}/reservations/")
    assert own_slug_response.status_code == 404
    reservation.refresh_from_db()
    assert reservation.state == S.HELD


def test_accepting_in_the_portal(catalog, organization, owner, monkeypatch):
    on_invoice(organization, days=30)
    settled = []
    monkeypatch.setattr(settlement, "settlement_enqueue", settled.append)
    reservation = quote(organization, catalog)
    client = client_for(owner)
    detail = f"/o/{organization.slug}/reservations/{reservation.public_id}/"
    assert b'data-testid="accept-quote">Accept quote for $710.40</button>' in (
        client.get(detail).content
    )
    response = client.post(f"{detail}accept/", follow=True)
    assert response.redirect_chain == [(detail, 302)]
    assert (
        "Quote accepted and the reservation confirmed. It is invoiced on your terms (net 30 days)."
        in response.content.decode()
    )
    reservation.refresh_from_db()
    assert reservation.state == S.SCHEDULED
    assert settled == [reservation.pk]


def test_declining_in_the_portal_releases_the_nodes(catalog, organization, owner):
    reservation = quote(organization, catalog)
    client = client_for(owner)
    url = f"/o/{organization.slug}/reservations/{reservation.public_id}/cancel/"
    assert b"<h1>Decline quote <code>" in client.get(url).content
    response = client.post(url, {"reason": ""}, follow=True)
    assert "Quote declined. The nodes are released." in response.content.decode()
    reservation.refresh_from_db()
    assert reservation.state == S.CANCELED
    assert Allocation.objects.filter(released_at__isnull=True).count() == 0
    event = AuditEvent.objects.get(action="reservation.transition", data__to="canceled")
    assert (event.actor, event.reason) == (owner, "Quote declined by the customer.")


def test_a_member_role_without_reserving_rights_cannot_accept_in_the_portal(catalog, organization):
    on_invoice(organization)
    reservation = quote(organization, catalog)
    client = client_for(member_of(organization, Role.BILLING))
    url = f"/o/{organization.slug}/reservations/{reservation.public_id}/accept/"
    assert client.post(url).status_code == 403
    reservation.refresh_from_db()
    assert reservation.state == S.HELD
    assert timezone.now() == NOW


def test_the_owners_and_billing_address_hear_of_a_new_quote(
    catalog, organization, owner, mailoutbox, django_capture_on_commit_callbacks
):
    second_owner = member_of(organization, Role.OWNER)
    member_of(organization, Role.MEMBER)  # not told: owners decide on quotes
    with django_capture_on_commit_callbacks(execute=True):
        reservation = quote(organization, catalog, note="As agreed on the call.")
    assert sorted(m.to[0] for m in mailoutbox) == sorted(
        [organization.billing_email, owner.email, second_owner.email]
    )
    mail = mailoutbox[0]
    assert mail.subject == "A quote for 2 × H100 from Hyperblock"
    assert "2 × H100 in US East, from Thu 10 Dec 2026, 00:00 UTC for 24 hours" in mail.body
    assert "$710.40 ($1.85 per GPU-hour)" in mail.body
    assert "As agreed on the call." in mail.body
    assert "held for you until Tue 8 Dec 2026, 09:30 UTC. Pay for it to confirm it." in mail.body
    assert f"/o/{organization.slug}/reservations/{reservation.public_id}/" in mail.body


def test_a_quote_larger_than_a_reservation_can_hold_is_refused(catalog, organization):
    from .conftest import _cluster

    _cluster("east-big", catalog.east, catalog.h100, 64)
    with pytest.raises(ServiceError) as refused:
        quote(
            organization, catalog, nodes=64, price="999999.9999",
            window=Window(START, START + hours(4368)),
        )  # fmt: skip
    assert (refused.value.message, refused.value.param) == (
        "That quote would come to $2,236,415,999,776.36, more than one reservation can hold. "
        "Lower the price or split the block.",
        "price_per_gpu_hour",
    )
    nothing_held()
