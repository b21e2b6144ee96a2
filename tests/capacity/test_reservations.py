from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Organization
from accounts.permissions import Role
from billing.models import Invoice, LedgerEntry, Payment, Refund
from capacity import extensions, lifecycle, services
from capacity.models import Allocation, Reservation
from capacity.windows import Window
from core.errors import Conflict, NotAllowed
from core.models import AuditEvent
from tests.conftest import member_of
from tests.factories import UserFactory

from .conftest import NEXT_HOUR, NOW, hours

S = Reservation.State


def reserve(org, user, catalog, nodes=2, start=NEXT_HOUR, length=24, region=None, **kwargs):
    return services.reservation_create(
        organization=org, user=user, gpu_model=catalog.h100, region=region or catalog.east,
        node_count=nodes, window=Window(start, start + hours(length)), **kwargs,
    )  # fmt: skip


def paid(reservation: Reservation, amount: str | None = None, *, attempt: str = "block", **fields):
    """A payment Stripe took for the reservation, as billing records it. The quote reads only
    these rows; tests/billing/test_settlement.py pays and refunds through localstripe."""
    fields = {"status": Payment.Status.SUCCEEDED, **fields}
    return Payment.objects.create(
        organization=reservation.organization,
        reservation=reservation,
        attempt_token=attempt,
        stripe_payment_intent_id=f"pi_{attempt}_{reservation.public_id}",
        amount=Decimal(amount) if amount else reservation.total,
        currency=reservation.currency,
        succeeded_at=timezone.now(),
        **fields,
    )


def scheduled(org, user, catalog, **kwargs) -> Reservation:
    """A reservation paid in full by card (one payment of its total), so scheduled."""
    reservation = reserve(org, user, catalog, **kwargs)
    reservation = lifecycle.reservation_transition(
        reservation=reservation, to=S.SCHEDULED, actor=None
    )
    paid(reservation)
    return reservation


def live_nodes(reservation: Reservation) -> list[int]:
    return sorted(
        reservation.allocations.filter(released_at__isnull=True).values_list("node_id", flat=True)
    )


def test_reserving_holds_whole_nodes_of_one_cluster(catalog, organization, owner):
    reservation = reserve(organization, owner, catalog, nodes=3)
    assert reservation.state == S.HELD
    assert reservation.hold_expires_at == NOW + timedelta(minutes=15)
    assert reservation.public_id.startswith("rsv_")
    assert len(reservation.public_id) == 18
    # Best fit: the 4-node cluster is the fullest one that still fits 3 nodes.
    assert reservation.cluster == catalog.east_a
    allocations = list(reservation.allocations.select_related("node"))
    assert len(allocations) == 3
    assert {a.node.cluster_id for a in allocations} == {catalog.east_a.pk}
    assert {(a.starts_at, a.ends_at) for a in allocations} == {(NEXT_HOUR, NEXT_HOUR + hours(24))}
    assert (reservation.currency, reservation.total) == ("usd", Decimal("1152.00"))
    assert reservation.price_lines == [
        {"description": "3 × 8 H100 × 24 h at $2.00/GPU-h", "amount": "1152.00"}
    ]
    event = AuditEvent.objects.get(action="reservation.created")
    assert (event.actor, event.organization, event.data["to"]) == (owner, organization, "held")


def test_invoice_terms_confirm_straight_to_scheduled(catalog, organization, owner):
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", payment_days=45, credit_limit=10000
    )
    organization.refresh_from_db()
    reservation = reserve(organization, owner, catalog)
    assert reservation.state == S.SCHEDULED
    assert reservation.hold_expires_at is None
    transition = AuditEvent.objects.get(action="reservation.transition")
    assert transition.data == {"from": "held", "to": "scheduled"}
    assert transition.reason == "Confirmed on invoice terms (net 45)."


def test_sold_out_offers_alternatives_and_writes_nothing(catalog, organization, owner):
    reserve(organization, owner, catalog, nodes=8)  # fills east-b
    reserve(organization, owner, catalog, nodes=4)  # fills east-a
    before = (Reservation.objects.count(), Allocation.objects.count(), AuditEvent.objects.count())
    with pytest.raises(services.SoldOut) as excinfo:
        reserve(organization, owner, catalog, nodes=2)
    assert (
        Reservation.objects.count(),
        Allocation.objects.count(),
        AuditEvent.objects.count(),
    ) == before
    kinds = [(o.kind, o.region.code, o.node_count, o.starts_at) for o in excinfo.value.alternatives]
    # The blocks end at 10:00 tomorrow: that is the nearest start; earlier starts are full.
    assert kinds == [
        ("other_time", "us-east", 2, NEXT_HOUR + hours(24)),
        ("other_time", "us-east", 2, NEXT_HOUR + hours(25)),
        ("other_time", "us-east", 2, NEXT_HOUR + hours(26)),
        ("other_region", "us-west", 2, NEXT_HOUR),
    ]


def test_a_form_submitted_twice_makes_one_reservation(catalog, organization, owner):
    first = reserve(organization, owner, catalog, request_token="token-1")
    again = reserve(organization, owner, catalog, request_token="token-1")
    assert again.pk == first.pk
    assert Reservation.objects.count() == 1
    assert Allocation.objects.count() == 2


@pytest.mark.parametrize(
    ("role", "allowed"),
    [(Role.OWNER, True), (Role.ADMIN, True), (Role.MEMBER, True), (Role.BILLING, False)],
)
def test_who_may_reserve(catalog, organization, owner, role, allowed):
    user = owner if role == Role.OWNER else member_of(organization, role)
    if allowed:
        assert reserve(organization, user, catalog).state == S.HELD
    else:
        with pytest.raises(NotAllowed, match=r"Your role \(billing\) does not allow this."):
            reserve(organization, user, catalog)
        assert Reservation.objects.count() == 0


def test_unverified_users_cannot_reserve(catalog, organization):
    user = member_of(organization, Role.OWNER)
    user.email_verified_at = None
    user.save()
    with pytest.raises(NotAllowed) as excinfo:
        reserve(organization, user, catalog)
    assert excinfo.value.code == "email_unverified"
    assert Reservation.objects.count() == 0


def test_suspended_organizations_cannot_reserve(catalog, organization, owner):
    Organization.objects.filter(pk=organization.pk).update(
        status="suspended", suspended_reason="Unpaid invoice"
    )
    organization.refresh_from_db()
    with pytest.raises(NotAllowed, match="suspended"):
        reserve(organization, owner, catalog)
    assert Reservation.objects.count() == 0


def test_strangers_cannot_reserve_for_an_organization(catalog, organization):
    stranger = UserFactory()
    with pytest.raises(Exception, match="Organization not found."):
        reserve(organization, stranger, catalog)
    assert Reservation.objects.count() == 0


def test_lapsed_holds_expire_once_and_free_their_nodes(catalog, organization, owner, frozen_clock):
    held = reserve(organization, owner, catalog, nodes=4)
    frozen_clock.shift(hours(0.25))
    assert services.lapsed_holds_expire() == 1
    assert services.lapsed_holds_expire() == 0
    held.refresh_from_db()
    assert held.state == S.EXPIRED
    assert live_nodes(held) == []
    assert (
        AuditEvent.objects.filter(action="reservation.transition", data__to="expired").count() == 1
    )


def test_a_lapsed_hold_does_not_block_the_next_customer(catalog, organization, owner, frozen_clock):
    reserve(organization, owner, catalog, nodes=8)
    reserve(organization, owner, catalog, nodes=4)
    frozen_clock.shift(hours(0.25))
    # No sweep has run yet; the allocator expires the lapsed holds of the pool itself.
    fresh = reserve(organization, owner, catalog, nodes=8)
    assert fresh.state == S.HELD
    assert Reservation.objects.filter(state=S.EXPIRED).count() == 2


def test_cancelling_a_hold_releases_it_at_no_cost(catalog, organization, owner):
    held = reserve(organization, owner, catalog)
    canceled = services.reservation_cancel(reservation=held, actor=owner, reason="Changed plans")
    assert (canceled.state, canceled.refund_due) == (S.CANCELED, None)
    assert live_nodes(canceled) == []
    event = AuditEvent.objects.get(action="reservation.transition")
    assert (event.reason, event.data["from"], event.data["to"]) == (
        "Changed plans",
        "held",
        "canceled",
    )


@pytest.mark.parametrize(
    ("start_in", "percent", "refund"),
    # Starts on the hour, and it is 09:30: 7 d + 1 h ahead is 7 d 30 min of notice; 7 d ahead
    # is half an hour short of a week.
    [(hours(24 * 7 + 1), 100, Decimal("768.00")), (hours(24 * 7), 50, Decimal("384.00")),
     (hours(1), 50, Decimal("384.00"))],
)  # fmt: skip
def test_cancelling_a_scheduled_reservation_quotes_the_policy_refund(
    catalog, organization, owner, start_in, percent, refund
):
    start = NOW.replace(minute=0) + start_in
    reservation = scheduled(organization, owner, catalog, start=start, length=24)
    assert services.refund_percent(reservation) == percent
    assert services.cancellation_quote(reservation) == services.CancellationQuote(
        refund, percent, "usd"
    )
    canceled = services.reservation_cancel(reservation=reservation, actor=owner)
    assert (canceled.state, canceled.refund_due) == (S.CANCELED, refund)
    assert services.cancellation_quote(canceled) is None  # canceled: nothing more to quote


def test_the_refund_is_a_share_of_what_was_paid_not_of_the_total(catalog, organization, owner):
    """The total is 768.00; what the customer still has in the block is less."""
    reservation = reserve(organization, owner, catalog)  # starts in half an hour: 50 %
    reservation = lifecycle.reservation_transition(
        reservation=reservation, to=S.SCHEDULED, actor=None
    )
    assert services.cancellation_quote(reservation).amount == Decimal("0.00")  # nothing paid
    block = paid(reservation, amount_refunded=Decimal("100.00"))  # a goodwill refund since
    assert services.settled_money(reservation) == Decimal("668.00")
    assert services.refund_amount(reservation) == Decimal("334.00")
    # A refund on its way to Stripe is money gone too; a failed one is not.
    Refund.objects.create(payment=block, amount=Decimal("0.01"), currency="usd", reason="x")
    Refund.objects.create(
        payment=block, amount=Decimal("5.00"), currency="usd", reason="y", status="failed"
    )
    # 667.99 x 50 % is 333.995: to the cent, half up.
    assert services.cancellation_quote(reservation) == services.CancellationQuote(
        Decimal("334.00"), 50, "usd"
    )
    Refund.objects.filter(amount=Decimal("0.01")).update(amount=Decimal("0.03"))
    assert services.refund_amount(reservation) == Decimal("333.99")  # 667.97 / 2 = 333.985
    # A paid extension adds its payment; a second payment taken by mistake (refunded on its
    # own, flagged for finance) does not.
    reservation = extend_paid(reservation, owner, 4)
    paid(reservation, "128.00", attempt="extension", extension=reservation.extensions.get())
    paid(reservation, "50.00", attempt="twice", flagged=True, status="duplicate")
    assert services.settled_money(reservation) == Decimal("795.97")
    canceled = services.reservation_cancel(reservation=reservation, actor=owner)
    assert canceled.refund_due == Decimal("397.99")  # 795.97 / 2 = 397.985
    event = AuditEvent.objects.filter(action="reservation.transition").latest("id")
    assert (event.data["refund_due"], event.data["refund_percent"]) == ("397.99", 50)


def test_on_invoice_terms_the_refund_is_a_share_of_invoices_less_credits(
    catalog, organization, owner
):
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", payment_days=30, credit_limit=10000
    )
    organization.refresh_from_db()
    reservation = reserve(organization, owner, catalog)  # confirmed at once: 50 % now
    # Not invoiced yet (settlement runs after the commit): committed for its total.
    assert services.refund_amount(reservation) == Decimal("384.00")
    invoice = Invoice.objects.create(
        organization=organization, reservation=reservation, amount=Decimal("768.00"),
        currency="usd", stripe_invoice_id="in_1", status="open",
    )  # fmt: skip
    LedgerEntry.objects.create(
        organization=organization, kind="credit", amount=Decimal("-68.02"), currency="usd",
        reservation=reservation, invoice=invoice, description="A credit note",
    )  # fmt: skip
    assert services.settled_money(reservation) == Decimal("699.98")
    assert services.refund_amount(reservation) == Decimal("349.99")
    Invoice.objects.filter(pk=invoice.pk).update(status="void")
    assert services.refund_amount(reservation) == Decimal("0.00")  # nothing is owed any more


def test_a_hold_quotes_nothing_back_and_a_started_block_cannot_be_quoted(
    catalog, organization, owner, frozen_clock
):
    held = reserve(organization, owner, catalog)
    assert services.cancellation_quote(held) == services.CancellationQuote(
        Decimal("0.00"), 0, "usd"
    )
    block = scheduled(organization, owner, catalog, start=NEXT_HOUR + hours(48))
    frozen_clock.shift(hours(49))
    assert services.cancellation_quote(block) is None


def test_nothing_is_refunded_or_canceled_after_the_start(
    catalog, organization, owner, frozen_clock
):
    reservation = reserve(organization, owner, catalog)
    reservation = lifecycle.reservation_transition(
        reservation=reservation, to=S.SCHEDULED, actor=None
    )
    frozen_clock.shift(hours(1))
    assert services.refund_percent(reservation) == 0
    with pytest.raises(Conflict, match="has started"):
        services.reservation_cancel(reservation=reservation, actor=owner)
    reservation.refresh_from_db()
    assert reservation.state == S.SCHEDULED


@pytest.mark.parametrize(
    ("start", "to"),
    [(S.HELD, S.ACTIVE), (S.HELD, S.COMPLETED), (S.EXPIRED, S.ACTIVE), (S.CANCELED, S.HELD)],
)
def test_illegal_transitions_are_refused(catalog, organization, owner, start, to):
    reservation = reserve(organization, owner, catalog)
    Reservation.objects.filter(pk=reservation.pk).update(state=start)
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.reservation_transition(reservation=reservation, to=to, actor=None)
    reservation.refresh_from_db()
    assert reservation.state == start


def extend_paid(reservation: Reservation, owner, n: int) -> Reservation:
    """Hold `n` more hours and apply them as billing does once they are paid."""
    extension = extensions.extension_hold(reservation=reservation, actor=owner, hours=n)
    extensions.extension_apply(extension=extension, reason="Paid.")
    return Reservation.objects.get(pk=reservation.pk)


def test_extending_keeps_the_same_nodes_and_adds_the_price(catalog, organization, owner):
    reservation = reserve(organization, owner, catalog, nodes=2, length=24)
    reservation = lifecycle.reservation_transition(
        reservation=reservation, to=S.SCHEDULED, actor=None
    )
    nodes = live_nodes(reservation)
    extended = extend_paid(reservation, owner, 6)
    assert extended.ends_at == NEXT_HOUR + hours(30)
    assert live_nodes(extended) == nodes
    assert set(extended.allocations.values_list("ends_at", flat=True)) == {NEXT_HOUR + hours(30)}
    # 24 h then 6 more h of 2 nodes x 8 GPUs at $2.00.
    assert extended.total == Decimal("768.00") + Decimal("192.00")
    assert extended.price_lines[-1] == {
        "description": "Extension by 6 h: 2 × 8 H100 × 6 h at $2.00/GPU-h", "amount": "192.00",
    }  # fmt: skip


def test_extension_blocked_by_the_next_booking_offers_alternatives(
    catalog, organization, owner, other_organization
):
    mine = reserve(organization, owner, catalog, nodes=4, length=24)  # all of east-a
    mine = lifecycle.reservation_transition(reservation=mine, to=S.SCHEDULED, actor=None)
    reserve(organization, owner, catalog, nodes=8, length=48)  # all of east-b
    theirs_owner = other_organization.memberships.get().user
    reserve(
        other_organization, theirs_owner, catalog, nodes=4, start=NEXT_HOUR + hours(24), length=4
    )
    with pytest.raises(extensions.ExtensionUnavailable) as excinfo:
        extensions.extension_hold(reservation=mine, actor=owner, hours=2)
    mine.refresh_from_db()
    assert mine.ends_at == NEXT_HOUR + hours(24)
    assert mine.total == Decimal("1536.00")
    # The extra two hours elsewhere: after the other customer's block in us-east, or in us-west.
    assert [(o.kind, o.region.code, o.starts_at) for o in excinfo.value.alternatives] == [
        ("other_time", "us-east", NEXT_HOUR + hours(28)),
        ("other_time", "us-east", NEXT_HOUR + hours(29)),
        ("other_time", "us-east", NEXT_HOUR + hours(30)),
        ("other_region", "us-west", NEXT_HOUR + hours(24)),
    ]


def test_only_scheduled_or_active_reservations_extend(catalog, organization, owner):
    held = reserve(organization, owner, catalog)
    with pytest.raises(Conflict, match="Only scheduled or active"):
        extensions.extension_hold(reservation=held, actor=owner, hours=1)
    held.refresh_from_db()
    assert held.ends_at == NEXT_HOUR + hours(24)


def test_a_block_whose_end_has_passed_cannot_be_extended(
    catalog, organization, owner, frozen_clock
):
    reservation = reserve(organization, owner, catalog, nodes=1, length=4)
    Reservation.objects.filter(pk=reservation.pk).update(state=S.ACTIVE)
    frozen_clock.move_to(NEXT_HOUR + hours(4))  # its end, before the release sweep ran
    with pytest.raises(Conflict) as refused:
        extensions.extension_hold(reservation=reservation, actor=owner, hours=2)
    assert (refused.value.code, refused.value.message) == (
        "not_extendable",
        f"{reservation.public_id} has already ended and can no longer be extended. "
        "You can reserve another block instead.",
    )
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total) == (NEXT_HOUR + hours(4), Decimal("64.00"))


def test_payment_confirms_a_hold(catalog, organization, owner):
    held = reserve(organization, owner, catalog)
    confirmed = services.reservation_confirm(reservation=held, actor=None, reason="Paid.")
    assert (confirmed.state, confirmed.hold_expires_at) == (S.SCHEDULED, None)
    # A repeated notice changes nothing.
    again = services.reservation_confirm(reservation=held, actor=None, reason="Paid.")
    assert again.state == S.SCHEDULED
    assert AuditEvent.objects.filter(action="reservation.transition").count() == 1


def test_late_payment_gets_the_same_nodes_back_when_they_are_free(
    catalog, organization, owner, frozen_clock
):
    held = reserve(organization, owner, catalog, nodes=3)
    nodes = live_nodes(held)
    frozen_clock.shift(hours(0.25))
    services.lapsed_holds_expire()
    confirmed = services.reservation_confirm(reservation=held, actor=None, reason="Paid.")
    assert confirmed.state == S.SCHEDULED
    assert live_nodes(confirmed) == nodes
    event = AuditEvent.objects.filter(action="reservation.transition").order_by("id").last()
    assert (event.data["from"], event.data["to"], event.data["reallocated"]) == (
        "expired", "scheduled", False,
    )  # fmt: skip


def test_late_payment_takes_other_nodes_when_its_own_were_sold(
    catalog, organization, owner, other_organization, frozen_clock
):
    held = reserve(organization, owner, catalog, nodes=4)  # east-a
    frozen_clock.shift(hours(0.25))
    reserve(other_organization, other_organization.memberships.get().user, catalog, nodes=4)
    confirmed = services.reservation_confirm(reservation=held, actor=None, reason="Paid.")
    assert (confirmed.state, confirmed.cluster) == (S.SCHEDULED, catalog.east_b)
    assert Allocation.objects.filter(reservation=held, cluster=catalog.east_b).count() == 4


def test_late_payment_without_capacity_is_refused_for_a_refund(
    catalog, organization, owner, other_organization, frozen_clock
):
    held = reserve(organization, owner, catalog, nodes=8)  # east-b
    frozen_clock.shift(hours(0.25))
    theirs = other_organization.memberships.get().user
    reserve(other_organization, theirs, catalog, nodes=8)
    reserve(other_organization, theirs, catalog, nodes=4)
    with pytest.raises(services.SoldOut, match="lapsed and its capacity has been taken"):
        services.reservation_confirm(reservation=held, actor=None, reason="Paid.")
    held.refresh_from_db()
    assert held.state == S.EXPIRED
    assert live_nodes(held) == []


def test_a_canceled_reservation_cannot_be_confirmed(catalog, organization, owner):
    held = reserve(organization, owner, catalog)
    services.reservation_cancel(reservation=held, actor=owner)
    with pytest.raises(Conflict, match="is canceled; it cannot be confirmed"):
        services.reservation_confirm(reservation=held, actor=None, reason="Paid.")
