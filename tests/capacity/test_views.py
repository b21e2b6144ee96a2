from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from accounts.permissions import Role
from billing.models import Payment
from capacity import lifecycle
from capacity.models import Allocation, Extension, Reservation
from core.models import AuditEvent
from tests.conftest import client_for, member_of

from .conftest import NEXT_HOUR
from .test_reservations import reserve, scheduled

S = Reservation.State
BLOCK = {"gpu_model": "h100", "region": "us-east", "node_count": 2, "duration_hours": 24,
         "starts_at": "2026-12-01T10:00"}  # fmt: skip


def url(name, org, *args):
    return reverse(name, args=[org.slug, *args])


def test_search_page_lists_offerings_and_htmx_returns_only_them(catalog, organization, owner):
    client = client_for(owner)
    page = client.get(url("capacity-search", organization), BLOCK)
    assert page.status_code == 200
    assert b"Available as asked" in page.content
    assert b"<html" in page.content
    partial = client.get(
        url("capacity-search", organization),
        BLOCK,
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="offerings",
    )
    assert partial.status_code == 200
    assert b"<html" not in partial.content
    assert b'data-testid="offerings"' in partial.content
    assert b"$768.00" in partial.content


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpu_model": "h900"}, "Unknown GPU model &#x27;h900&#x27;; choose one of: h100."),
        (
            {"region": "mars-1"},
            "Unknown region &#x27;mars-1&#x27;; choose one of: us-east, us-west.",
        ),
        ({"starts_at": "2026-12-01T10:30"}, "Blocks start on the hour"),
        ({"starts_at": "2026-11-30T10:00"}, "The start is in the past."),
        ({"starts_at": "yesterday"}, "Give the start as a date and time"),
        ({"duration_hours": "0"}, "Reserve between 1 and 4368 hours"),
        ({"duration_hours": "1.5"}, "Give the duration in whole hours."),
        ({"node_count": "0"}, "Reserve between 1 and 64 nodes at a time."),
    ],
)
def test_bad_searches_say_what_is_wrong(catalog, organization, owner, changes, message):
    page = client_for(owner).get(url("capacity-search", organization), {**BLOCK, **changes})
    assert page.status_code == 200
    assert message in page.content.decode()
    assert page.context["results"] is None


def test_quote_updates_live_and_reserving_creates_a_hold(catalog, organization, owner):
    client = client_for(owner)
    quote = client.get(
        url("reservation-new", organization), {**BLOCK, "node_count": 3},
        HTTP_HX_REQUEST="true", HTTP_HX_TARGET="quote",
    )  # fmt: skip
    assert b'data-testid="quote-total">$1,152.00<' in quote.content
    assert b"8 nodes free in one cluster" in quote.content
    response = client.post(url("reservation-new", organization), {**BLOCK, "request_token": "abc"})
    reservation = Reservation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == url("reservation-detail", organization, reservation.public_id)
    assert (reservation.state, reservation.node_count, reservation.starts_at) == (
        S.HELD,
        2,
        NEXT_HOUR,
    )
    detail = client.get(response["Location"])
    assert b'data-testid="hold"' in detail.content
    assert b"Reserved" in detail.content  # the timeline


def test_posting_the_same_form_twice_makes_one_reservation(catalog, organization, owner):
    client = client_for(owner)
    first = client.post(url("reservation-new", organization), {**BLOCK, "request_token": "same"})
    second = client.post(url("reservation-new", organization), {**BLOCK, "request_token": "same"})
    assert first["Location"] == second["Location"]
    assert Reservation.objects.count() == 1


def test_capacity_gone_between_quote_and_reserve_shows_alternatives(catalog, organization, owner):
    client = client_for(owner)
    client.get(url("reservation-new", organization), {**BLOCK, "node_count": 8})
    reserve(organization, owner, catalog, nodes=8)  # someone else was faster
    reserve(organization, owner, catalog, nodes=4)
    before = Reservation.objects.count()
    response = client.post(
        url("reservation-new", organization), {**BLOCK, "node_count": 8, "request_token": "late"}
    )
    assert response.status_code == 409
    assert b"is no longer available for that window" in response.content
    assert b'data-testid="alternatives"' in response.content
    assert Reservation.objects.count() == before


def test_members_without_the_right_are_told_and_nothing_is_written(catalog, organization):
    billing = member_of(organization, Role.BILLING)
    response = client_for(billing).post(
        url("reservation-new", organization), {**BLOCK, "request_token": "x"}
    )
    assert response.status_code == 403
    assert Reservation.objects.count() == 0


def test_unverified_users_see_why_they_cannot_reserve(catalog, organization):
    user = member_of(organization, Role.MEMBER)
    user.email_verified_at = None
    user.save()
    client = client_for(user)
    page = client.get(url("reservation-new", organization), BLOCK)
    assert b"Verify your e-mail address before reserving" in page.content
    response = client.post(url("reservation-new", organization), {**BLOCK, "request_token": "x"})
    assert response.status_code == 400
    assert Reservation.objects.count() == 0


def test_cancel_page_quotes_the_refund_then_cancels(catalog, organization, owner):
    reservation = scheduled(organization, owner, catalog)  # 768.00 paid
    # A goodwill refund since: the policy's half is of what is left, 667.99.
    Payment.objects.filter(reservation=reservation).update(amount_refunded=Decimal("100.01"))
    client = client_for(owner)
    page = client.get(url("reservation-cancel", organization, reservation.public_id))
    html = page.content.decode()
    assert "You paid $667.99. Canceling now refunds <strong>$334.00</strong> (50%)" in html
    # The same two amounts again, one under the other in the figures column.
    assert (
        '<tr><td>Paid, less refunds and credits</td><td class="num">$667.99</td></tr>\n'
        '      <tr class="total"><td>Refunded if you cancel now (50%)</td>'
        '<td class="num">$334.00</td></tr>'
    ) in html
    response = client.post(
        url("reservation-cancel", organization, reservation.public_id), {"reason": "Done early"}
    )
    reservation.refresh_from_db()
    assert (reservation.state, str(reservation.refund_due)) == (S.CANCELED, "334.00")
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Canceled. USD 334.00 will be refunded to the original payment method."
    ]


def test_extend_form_holds_the_hours_and_sends_the_customer_to_pay(catalog, organization, owner):
    reservation = reserve(organization, owner, catalog)
    lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)
    client = client_for(owner)
    page = client.get(url("reservation-extend", organization, reservation.public_id), {"hours": 5})
    assert page.status_code == 200
    assert '<strong data-testid="extend-price">$160.00</strong>' in page.content.decode()
    partial = client.get(
        url("reservation-extend", organization, reservation.public_id),
        {"hours": 5},
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="extend-quote",
    )
    assert partial.content.decode().startswith('<div id="extend-quote"')
    assert Extension.objects.count() == 0  # quoting changes nothing
    response = client.post(
        url("reservation-extend", organization, reservation.public_id),
        {"hours": 5, "attempt": "a1", "pay": "card"},
    )
    again = client.post(  # the button pressed twice
        url("reservation-extend", organization, reservation.public_id),
        {"hours": 5, "attempt": "a1", "pay": "card"},
    )
    extension = Extension.objects.get()
    assert again["Location"] == response["Location"]
    assert response.status_code == 302
    assert response["Location"] == (
        f"/o/{organization.slug}/reservations/{reservation.public_id}/extensions/"
        f"{extension.public_id}/pay/"
    )
    reservation.refresh_from_db()
    assert (reservation.duration_hours, extension.state, extension.price) == (
        24, "held", Decimal("160.00"),
    )  # fmt: skip
    detail = client.get(url("reservation-detail", organization, reservation.public_id))
    assert 'data-testid="pending-extension"' in detail.content.decode()


def test_list_filters_by_state(catalog, organization, owner):
    held = reserve(organization, owner, catalog)
    scheduled = lifecycle.reservation_transition(
        reservation=reserve(organization, owner, catalog), to=S.SCHEDULED, actor=None
    )
    client = client_for(owner)
    listed = client.get(url("reservation-list", organization), {"state": "scheduled"})
    assert [r.public_id for r in listed.context["reservations"]] == [scheduled.public_id]
    everything = client.get(url("reservation-list", organization))
    assert {r.public_id for r in everything.context["reservations"]} == {
        held.public_id,
        scheduled.public_id,
    }


def test_calendar_page_and_zoom(catalog, organization, owner):
    client = client_for(owner)
    page = client.get(
        url("capacity-calendar", organization), {"gpu_model": "h100", "region": "us-east"}
    )
    assert page.status_code == 200
    assert b'data-zoom="day"' in page.content
    zoomed = client.get(
        url("capacity-calendar", organization),
        {"gpu_model": "h100", "region": "us-east", "week": "2026-12-03"},
        HTTP_HX_REQUEST="true", HTTP_HX_TARGET="calendar",
    )  # fmt: skip
    assert b'data-zoom="hour"' in zoomed.content
    assert b"<html" not in zoomed.content


@pytest.mark.parametrize("role", list(Role.values))
def test_another_organizations_reservations_are_404_and_untouched(
    catalog, organization, owner, other_organization, role
):
    theirs = reserve(other_organization, other_organization.memberships.get().user, catalog)
    lifecycle.reservation_transition(reservation=theirs, to=S.SCHEDULED, actor=None)
    actor = owner if role == Role.OWNER else member_of(organization, role)
    client = client_for(actor)
    before = (
        list(Reservation.objects.values_list("pk", "state", "ends_at")),
        list(Allocation.objects.values_list("pk", "released_at", "ends_at")),
        AuditEvent.objects.count(),
    )
    for slug_org in (organization, other_organization):
        assert client.get(url("reservation-detail", slug_org, theirs.public_id)).status_code == 404
        assert client.post(url("reservation-cancel", slug_org, theirs.public_id)).status_code in (
            403,
            404,
        )
        assert client.post(
            url("reservation-extend", slug_org, theirs.public_id), {"hours": 1}
        ).status_code in (403, 404)
    assert client.get(url("reservation-list", other_organization)).status_code == 404
    assert (
        theirs.public_id.encode() not in client.get(url("reservation-list", organization)).content
    )
    after = (
        list(Reservation.objects.values_list("pk", "state", "ends_at")),
        list(Allocation.objects.values_list("pk", "released_at", "ends_at")),
        AuditEvent.objects.count(),
    )
    assert after == before


def test_the_timeline_names_sla_credits_and_never_shows_an_empty_arrow(
    catalog, organization, owner
):
    from core import audit

    reservation = scheduled(organization, owner, catalog)
    common = {"actor": None, "organization": organization, "target": reservation}
    data = {"credit": "slc_1", "cause": "late_start", "amount": "32.00", "currency": "usd"}
    audit.record(action="sla_credit.opened", data=data, **common)
    audit.record(action="sla_credit.granted", data={**data, "method": "refund"}, **common)
    audit.record(action="sla_credit.failed", data={"credit": "slc_2", "message": "x"}, **common)
    audit.record(action="reservation.something_new", data={}, **common)
    page = client_for(owner).get(url("reservation-detail", organization, reservation.public_id))
    html = page.content.decode()
    for text in (
        "<strong>SLA credit of $32.00 for time lost</strong>",
        "<strong>SLA credit of $32.00 refunded to your card</strong>",
        "<strong>SLA credit not paid back yet: our finance team is on it</strong>",
        "<strong>Updated</strong>",
    ):
        assert text in html
    assert "<strong> → </strong>" not in html
