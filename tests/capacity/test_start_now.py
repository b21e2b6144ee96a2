"""A block booked to start now starts the minute its payment is confirmed and runs the whole
length paid for; its nodes are held to the whole hour after the latest end it could have."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from accounts.models import Organization
from billing.services import payments
from capacity import offerings, provisioning, selectors, services
from capacity.models import Allocation, Reservation
from capacity.windows import Window, start_now_held_until, window_for
from core.models import AuditEvent
from tests.billing.conftest import card, localstripe_url, stripe_api  # noqa: F401
from tests.conftest import client_for

from .conftest import NOW, hours

S = Reservation.State
pytestmark = pytest.mark.django_db


def start_now(org, user, catalog, *, nodes=2, length=4, **kwargs) -> Reservation:
    return services.reservation_create(
        organization=org,
        user=user,
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=nodes,
        window=window_for(starts_at=None, duration_hours=length),
        **kwargs,
    )


def periods(reservation: Reservation) -> set[tuple[datetime, datetime]]:
    live = Allocation.objects.filter(reservation=reservation, released_at__isnull=True)
    return set(live.values_list("starts_at", "ends_at"))


def test_the_latest_possible_end_is_rounded_up_to_the_whole_hour():
    window = Window(NOW, NOW + hours(4), starts_on_payment=True)
    assert start_now_held_until(window, NOW + timedelta(minutes=15)) == datetime(
        2026, 12, 1, 14, 0, tzinfo=UTC
    )  # paid at 09:45 at the latest, it would end 13:45
    assert start_now_held_until(window, datetime(2026, 12, 1, 10, 0, tzinfo=UTC)) == datetime(
        2026, 12, 1, 14, 0, tzinfo=UTC
    )  # an end on the hour stays


def test_a_held_start_now_block_holds_its_nodes_past_its_latest_possible_end(
    catalog, organization, owner
):
    reservation = start_now(organization, owner, catalog)  # at 09:30, hold until 09:45
    assert (reservation.state, reservation.starts_on_payment) == (S.HELD, True)
    assert (reservation.starts_at, reservation.ends_at) == (NOW, NOW + hours(4))
    assert reservation.total == Decimal("128.00")  # 2 x 8 H100 x 4 h at $2.00
    assert periods(reservation) == {(NOW, datetime(2026, 12, 1, 14, 0, tzinfo=UTC))}
    # The last hour it may still need is not sold; the hour after it is.
    east_a = reservation.cluster
    assert east_a == catalog.east_a  # best fit: the 4-node cluster
    at = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    assert selectors.free_nodes_by_cluster([east_a.pk], at, at + hours(1)) == {east_a.pk: 2}
    assert selectors.free_nodes_by_cluster([east_a.pk], at + hours(1), at + hours(2)) == {
        east_a.pk: 4
    }


def test_confirmed_17_minutes_later_it_runs_exactly_its_hours_from_then(
    catalog, organization, owner, other_organization, frozen_clock, settings
):
    settings.CAPACITY_HOLD = timedelta(minutes=20)  # typing a card for 17 minutes, still held
    reservation = start_now(organization, owner, catalog)
    assert periods(reservation) == {(NOW, datetime(2026, 12, 1, 14, 0, tzinfo=UTC))}
    # The next whole hour after its latest end is free for a neighbour, on the same nodes.
    theirs = other_organization.memberships.get().user
    neighbour = services.reservation_create(
        organization=other_organization,
        user=theirs,
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=4,
        window=Window(
            datetime(2026, 12, 1, 14, 0, tzinfo=UTC), datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
        ),
    )
    assert neighbour.cluster == reservation.cluster
    frozen_clock.shift(timedelta(minutes=17, seconds=25))
    confirmed = services.reservation_confirm(
        reservation=reservation, actor=None, reason="Paid by card."
    )
    paid_at = datetime(2026, 12, 1, 9, 47, tzinfo=UTC)
    assert (confirmed.starts_at, confirmed.ends_at) == (paid_at, paid_at + hours(4))
    assert confirmed.duration_hours == 4
    assert confirmed.total == Decimal("128.00")
    assert periods(confirmed) == {(paid_at, paid_at + hours(4))}
    # It starts at once: provisioning, not waiting for a start that has passed.
    assert confirmed.state == S.PROVISIONING
    assert list(
        AuditEvent.objects.filter(action="reservation.transition", object_id=str(reservation.pk))
        .order_by("pk")
        .values_list("data__to", flat=True)
    ) == ["scheduled", "provisioning"]
    assert provisioning.reservation_start_due() == 0  # nothing left for the sweep
    neighbour.refresh_from_db()
    assert (neighbour.state, periods(neighbour)) == (
        S.HELD,
        {(datetime(2026, 12, 1, 14, 0, tzinfo=UTC), datetime(2026, 12, 1, 16, 0, tzinfo=UTC))},
    )


def test_paid_after_its_hold_lapsed_it_still_runs_its_hours_from_the_payment(
    catalog, organization, owner, frozen_clock
):
    reservation = start_now(organization, owner, catalog)
    frozen_clock.shift(timedelta(minutes=16))
    assert services.lapsed_holds_expire() == 1
    frozen_clock.shift(timedelta(minutes=1))
    confirmed = services.reservation_confirm(
        reservation=reservation, actor=None, reason="Paid by card."
    )
    paid_at = datetime(2026, 12, 1, 9, 47, tzinfo=UTC)
    assert (confirmed.state, confirmed.starts_at, confirmed.ends_at) == (
        S.PROVISIONING,
        paid_at,
        paid_at + hours(4),
    )
    assert periods(confirmed) == {(paid_at, paid_at + hours(4))}


def test_on_invoice_terms_it_starts_at_once_and_holds_only_its_hours(catalog, organization, owner):
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", payment_days=30, credit_limit=Decimal("10000")
    )
    organization.refresh_from_db()
    reservation = start_now(organization, owner, catalog)
    reservation.refresh_from_db()
    assert (reservation.starts_at, reservation.ends_at) == (NOW, NOW + hours(4))
    assert periods(reservation) == {(NOW, NOW + hours(4))}


def test_paying_by_card_starts_the_block_from_the_payment(
    catalog, organization, owner, frozen_clock, settings, stripe_api
):
    settings.CAPACITY_HOLD = timedelta(minutes=20)
    reservation = start_now(organization, owner, catalog, length=2)
    frozen_clock.shift(timedelta(minutes=17))
    payment = payments.payment_by_card_create(
        reservation=reservation,
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="now-1",
    )
    reservation.refresh_from_db()
    paid_at = datetime(2026, 12, 1, 9, 47, tzinfo=UTC)
    assert (payment.status, payment.amount) == ("succeeded", Decimal("64.00"))
    assert (reservation.state, reservation.starts_at, reservation.ends_at) == (
        S.PROVISIONING,
        paid_at,
        paid_at + hours(2),
    )
    assert periods(reservation) == {(paid_at, paid_at + hours(2))}


def test_search_offers_start_now_only_when_the_held_hours_are_free(
    catalog, organization, owner, other_organization, frozen_clock
):
    """At 09:50 a 4-hour block paid at the hold's last minute would end 14:05: 14:00-15:00
    must be free too, or the search would offer a block the hold then cannot take."""
    theirs = other_organization.memberships.get().user
    Organization.objects.filter(pk=other_organization.pk).update(
        payment_terms="invoice", payment_days=30, credit_limit=Decimal("10000")
    )  # confirmed at once: their blocks do not lapse while the clock moves on
    other_organization.refresh_from_db()
    at = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    for nodes in (4, 8):  # the whole of us-east from 14:00 to 15:00
        services.reservation_create(
            organization=other_organization,
            user=theirs,
            gpu_model=catalog.h100,
            region=catalog.east,
            node_count=nodes,
            window=Window(at, at + hours(1)),
        )
    frozen_clock.shift(timedelta(minutes=20))  # 09:50
    window = window_for(starts_at=None, duration_hours=4)
    assert window.held_until == datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
    found = offerings.search(
        organization=organization,
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=2,
        window=window,
    )
    assert "exact" not in [o.kind for o in found]
    with pytest.raises(services.SoldOut):
        start_now(organization, owner, catalog)
    frozen_clock.shift(timedelta(minutes=-10))  # 09:40: it would end by 13:55 at the latest
    assert start_now(organization, owner, catalog).state == S.HELD


def test_the_reservation_page_says_when_a_start_now_block_runs(
    catalog, organization, owner, frozen_clock
):
    client = client_for(owner)
    reservation = start_now(organization, owner, catalog)
    page = reverse("reservation-detail", args=[organization.slug, reservation.public_id])
    held = client.get(page).content.decode()
    assert "<dt>Start</dt><dd>The minute it is paid</dd>" in held
    assert "<dt>End</dt><dd>4 h after that</dd>" in held
    frozen_clock.shift(timedelta(minutes=12))
    services.reservation_confirm(reservation=reservation, actor=None, reason="Paid by card.")
    running = client.get(page).content.decode()
    assert "<dt>Start</dt><dd>Tue 1 Dec 2026, 09:42 UTC (when it was paid)</dd>" in running
    assert "<dt>End</dt><dd>Tue 1 Dec 2026, 13:42 UTC</dd>" in running


def test_paid_after_its_hold_ran_out_into_a_taken_hour_it_is_sold_out(
    catalog, organization, owner, other_organization, frozen_clock
):
    """Not swept yet, but paid at 10:05: it would run into 14:00, which was sold meanwhile."""
    reservation = start_now(organization, owner, catalog)  # held on east-a until 14:00
    theirs = other_organization.memberships.get().user
    at = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    neighbour = services.reservation_create(
        organization=other_organization,
        user=theirs,
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=4,
        window=Window(at, at + hours(1)),
    )
    assert neighbour.cluster == reservation.cluster
    frozen_clock.shift(timedelta(minutes=35))
    with pytest.raises(services.SoldOut):
        services.reservation_confirm(reservation=reservation, actor=None, reason="Paid by card.")
    reservation.refresh_from_db()
    assert (reservation.state, reservation.starts_at) == (S.HELD, NOW)
    assert periods(reservation) == {(NOW, at)}  # nothing changed
