"""Nothing payable after it lapsed: open PaymentIntents are canceled when a hold or a quote
expires, and a payment that still arrives is confirmed or refunded by the late-payment rules."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from backoffice.roles import SALES
from billing import gateway, selectors, tasks
from billing.models import FinanceFlag, LedgerEntry, Payment, Refund
from billing.services import extensions, lapses, payments
from capacity import quotes
from capacity import services as capacity_services
from capacity.models import GpuModel, ListPrice, Region, Reservation
from capacity.windows import Window, ceil_hour
from core.models import AuditEvent
from tests.backoffice.conftest import make_staff

from .conftest import (
    THREE_D_SECURE,
    authenticate,
    card,
    event,
    held_reservation,
    signed,
    stripe_charges,
)
from .test_extensions import paid_block
from .test_webhooks import post

S = Reservation.State
pytestmark = pytest.mark.usefixtures("stripe_api")


def ledger(org) -> list[tuple[str, Decimal]]:
    return sorted(LedgerEntry.objects.filter(organization=org).values_list("kind", "amount"))


def expire(after: timedelta, callbacks) -> None:
    """The hold-expiry sweep, `after` from now, with what it enqueues run (settlement)."""
    with time_machine.travel(timezone.now() + after), callbacks(execute=True):
        capacity_services.lapsed_holds_expire()


def a_quote(org, *, valid_days: int = 1) -> Reservation:
    start = ceil_hour(timezone.now()) + timedelta(days=3)
    return quotes.quote_create(
        organization=org,
        actor=make_staff(SALES),
        gpu_model=GpuModel.objects.get(slug="h100"),
        region=Region.objects.get(code="us-east"),
        node_count=2,
        window=Window(start, start + timedelta(hours=24)),
        price_per_gpu_hour="1.85",
        valid_for=timedelta(days=valid_days),
    )


def arrives(client, payment: Payment, times: int = 1) -> None:
    """Stripe tells us (once, or again as a new event) that the payment succeeded."""
    for n in range(times):
        body, signature = signed(
            event(f"evt_late_{n}", "payment_intent.succeeded", payment.stripe_payment_intent_id)
        )
        assert post(client, body, signature).status_code == 200


# --- Canceled at Stripe -----------------------------------------------------------------------
def test_a_lapsed_hold_cancels_its_open_payment_intent_at_stripe(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    payment, secret = payments.payment_intent_open(
        reservation=reservation, actor=owner, attempt_token="api-1"
    )
    assert secret.startswith(payment.stripe_payment_intent_id)
    assert gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).status == (
        "requires_payment_method"
    )
    expire(timedelta(minutes=16), django_capture_on_commit_callbacks)
    reservation.refresh_from_db()
    payment.refresh_from_db()
    assert reservation.state == S.EXPIRED
    assert gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).status == "canceled"
    assert payment.status == Payment.Status.CANCELED
    event = AuditEvent.objects.get(action="payment.canceled")
    assert (event.object_id, event.data["from"], event.data["to"]) == (
        str(payment.pk),
        "pending",
        "canceled",
    )
    # Settling again (the sweep, a retried task) finds nothing left to cancel.
    assert lapses.lapsed_payments_cancel(reservation=reservation) == 0
    assert AuditEvent.objects.filter(action="payment.canceled").count() == 1
    assert ledger(organization) == []


def test_a_hold_the_customer_cancels_cancels_its_open_payment_intent_at_stripe(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    payment, _ = payments.payment_intent_open(
        reservation=reservation, actor=owner, attempt_token="api-1"
    )
    with django_capture_on_commit_callbacks(execute=True):
        capacity_services.reservation_cancel(reservation=reservation, actor=owner)
    reservation.refresh_from_db()
    payment.refresh_from_db()
    assert (reservation.state, reservation.refund_due) == (S.CANCELED, None)
    assert gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).status == "canceled"
    assert payment.status == Payment.Status.CANCELED
    assert ledger(organization) == []


def test_every_attempt_still_open_at_stripe_is_canceled(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    """One attempt waits for 3-D Secure, one failed it (Stripe waits for another card)."""
    reservation = held_reservation(organization, owner, catalog)
    waiting = payments.payment_by_card_create(
        reservation=reservation,
        actor=owner,
        payment_method_id=card(stripe_api, THREE_D_SECURE),
        attempt_token="a",
    )
    failed = payments.payment_by_card_create(
        reservation=reservation,
        actor=owner,
        payment_method_id=card(stripe_api, THREE_D_SECURE),
        attempt_token="b",
    )
    authenticate(stripe_api, payments.client_secret_for_payment(failed), success=False)
    payments.payment_sync(payment_intent_id=failed.stripe_payment_intent_id)
    failed.refresh_from_db()
    assert (waiting.status, failed.status) == ("requires_action", "failed")
    expire(timedelta(minutes=16), django_capture_on_commit_callbacks)
    for payment in (waiting, failed):
        payment.refresh_from_db()
        assert payment.status == Payment.Status.CANCELED
        intent = gateway.payment_intent_retrieve(payment.stripe_payment_intent_id)
        assert intent.status == "canceled"
    assert AuditEvent.objects.filter(action="payment.canceled").count() == 2


def test_the_settlement_sweep_cancels_what_a_lost_task_left_open(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    payment, _ = payments.payment_intent_open(
        reservation=reservation, actor=owner, attempt_token="api-1"
    )
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        capacity_services.lapsed_holds_expire()  # its settling task never ran
    assert lapses.reservations_with_lapsed_payments() == {reservation.pk}
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.settle_pending() == 1
    payment.refresh_from_db()
    assert payment.status == Payment.Status.CANCELED
    assert gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).status == "canceled"
    assert lapses.reservations_with_lapsed_payments() == set()
    assert tasks.settle_pending() == 0


def test_an_intent_stripe_does_not_know_is_flagged_once_and_settling_goes_on(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    payment, _ = payments.payment_intent_open(
        reservation=reservation, actor=owner, attempt_token="api-1"
    )
    Payment.objects.filter(pk=payment.pk).update(stripe_payment_intent_id="pi_unknown")
    expire(timedelta(minutes=16), django_capture_on_commit_callbacks)
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.stripe_object_id, flag.payment_id) == (
        "reconciliation",
        "pi_unknown",
        payment.pk,
    )
    assert lapses.reservations_with_lapsed_payments() == set()  # not again at every sweep
    assert lapses.lapsed_payments_cancel(reservation=reservation) == 0
    assert FinanceFlag.objects.count() == 1


def test_an_expired_quote_cancels_its_open_payment_intent_at_stripe(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    quote = a_quote(organization)
    payment, _ = payments.payment_intent_open(
        reservation=quote, actor=owner, attempt_token="quote-1"
    )
    expire(timedelta(hours=1), django_capture_on_commit_callbacks)  # still valid
    assert gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).status == (
        "requires_payment_method"
    )
    expire(timedelta(days=1, minutes=1), django_capture_on_commit_callbacks)
    quote.refresh_from_db()
    payment.refresh_from_db()
    assert (quote.state, payment.status) == (S.EXPIRED, Payment.Status.CANCELED)
    assert gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).status == "canceled"


def test_a_payment_that_succeeded_just_before_the_cancel_is_booked_not_lost(
    catalog, organization, owner, stripe_api
):
    """Stripe refuses to cancel an intent that succeeded: its success is booked as late."""
    reservation = held_reservation(organization, owner, catalog)
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        capacity_services.lapsed_holds_expire()  # settlement not run yet
        payment = stripe_charges(reservation, card(stripe_api))
        assert lapses.lapsed_payments_cancel(reservation=reservation) == 0
    payment.refresh_from_db()
    reservation.refresh_from_db()
    assert (payment.status, reservation.state) == ("succeeded", S.SCHEDULED)
    assert Refund.objects.count() == 0


def test_a_lapsed_extension_cancels_its_open_payment_intent_and_leaves_the_block_alone(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    started = extensions.extension_start(
        reservation=reservation,
        actor=owner,
        hours=2,
        attempt_token="t",
        collect=extensions.PAYMENT_INTENT,
    )
    block_payment = reservation.payments.get(extension__isnull=True)
    expire(timedelta(minutes=16), django_capture_on_commit_callbacks)
    started.extension.refresh_from_db()
    payment = Payment.objects.get(pk=started.payment.pk)
    assert (started.extension.state, payment.status) == ("lapsed", Payment.Status.CANCELED)
    assert gateway.payment_intent_retrieve(payment.stripe_payment_intent_id).status == "canceled"
    block_payment.refresh_from_db()
    reservation.refresh_from_db()
    assert (block_payment.status, block_payment.amount_refunded) == ("succeeded", Decimal("0"))
    assert (reservation.state, reservation.total) == (S.SCHEDULED, Decimal("768.00"))
    assert Refund.objects.count() == 0


# --- A payment that still arrives ---------------------------------------------------------------
def test_a_late_payment_for_an_expired_quote_is_refunded_in_full(
    catalog, organization, owner, client, stripe_api, django_capture_on_commit_callbacks
):
    quote = a_quote(organization)
    expire(timedelta(days=1, minutes=1), django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        payment = stripe_charges(Reservation.objects.get(pk=quote.pk), card(stripe_api))
        arrives(client, payment, times=2)
    payment.refresh_from_db()
    quote.refresh_from_db()
    assert quote.state == S.EXPIRED
    assert (payment.status, payment.amount, payment.amount_refunded) == (
        "succeeded",
        Decimal("710.40"),
        Decimal("710.40"),
    )
    refund = Refund.objects.get()
    assert (refund.amount, refund.status) == (Decimal("710.40"), "succeeded")
    assert refund.reason.startswith(f"The quote {quote.public_id} expired before the payment")
    assert FinanceFlag.objects.get().kind == "late_payment_refunded"
    assert ledger(organization) == [
        ("charge", Decimal("710.40")),
        ("credit", Decimal("-710.40")),
        ("payment", Decimal("-710.40")),
        ("refund", Decimal("710.40")),
    ]
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    assert [m.subject for m in mail.outbox] == [f"Refund of 710.40 USD for {quote.public_id}"]
    assert quote.allocations.filter(released_at__isnull=True).count() == 0
    assert AuditEvent.objects.filter(action="refund.succeeded").count() == 1
    assert AuditEvent.objects.filter(action="payment.succeeded").count() == 1


def _lapsed(catalog, organization, owner, callbacks) -> Reservation:
    reservation = held_reservation(organization, owner, catalog)  # 2 x 8 x 24 h x $2 = 768
    expire(timedelta(minutes=16), callbacks)
    reservation.refresh_from_db()
    assert reservation.state == S.EXPIRED
    return reservation


def test_a_late_payment_at_the_same_price_is_confirmed(
    catalog, organization, owner, client, stripe_api, django_capture_on_commit_callbacks
):
    reservation = _lapsed(catalog, organization, owner, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        payment = stripe_charges(reservation, card(stripe_api))
        arrives(client, payment, times=2)
    reservation.refresh_from_db()
    payment.refresh_from_db()
    assert (reservation.state, payment.status, payment.amount_refunded) == (
        S.SCHEDULED,
        "succeeded",
        Decimal("0.00"),
    )
    assert Refund.objects.count() == 0
    assert ledger(organization) == [("charge", Decimal("768.00")), ("payment", Decimal("-768.00"))]
    assert [m.subject for m in mail.outbox] == [
        f"Reservation {reservation.public_id} is confirmed",
        f"Receipt for reservation {reservation.public_id}",
    ]


def test_a_late_payment_when_the_price_fell_is_confirmed_and_the_difference_refunded(
    catalog, organization, owner, client, stripe_api, django_capture_on_commit_callbacks
):
    reservation = _lapsed(catalog, organization, owner, django_capture_on_commit_callbacks)
    ListPrice.objects.filter(region=catalog.east).update(price_per_gpu_hour=Decimal("1.50"))
    with django_capture_on_commit_callbacks(execute=True):
        payment = stripe_charges(reservation, card(stripe_api))
        arrives(client, payment, times=2)  # the second event books nothing again
    reservation.refresh_from_db()
    payment.refresh_from_db()
    assert (reservation.state, reservation.total) == (S.SCHEDULED, Decimal("768.00"))
    assert (payment.status, payment.amount, payment.amount_refunded) == (
        "succeeded",
        Decimal("768.00"),
        Decimal("192.00"),  # 768 paid, 2 x 8 x 24 h x $1.50 = 576 now
    )
    refund = Refund.objects.get()
    assert (refund.amount, refund.status, refund.payment) == (
        Decimal("192.00"),
        "succeeded",
        payment,
    )
    assert "costs $576.00 now" in refund.reason
    assert ledger(organization) == [
        ("charge", Decimal("768.00")),
        ("credit", Decimal("-192.00")),
        ("payment", Decimal("-768.00")),
        ("refund", Decimal("192.00")),
    ]
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    confirmed = AuditEvent.objects.get(action="reservation.transition", data__to="scheduled")
    assert (confirmed.data["price_now"], confirmed.data["overpaid"]) == ("576.00", "192.00")
    assert AuditEvent.objects.filter(action="refund.succeeded").count() == 1
    assert AuditEvent.objects.filter(action="payment.succeeded").count() == 1
    assert FinanceFlag.objects.count() == 0
    assert f"Refund of 192.00 USD for {reservation.public_id}" in [m.subject for m in mail.outbox]


def test_a_late_payment_when_the_price_rose_is_refunded_in_full(
    catalog, organization, owner, client, stripe_api, django_capture_on_commit_callbacks
):
    reservation = _lapsed(catalog, organization, owner, django_capture_on_commit_callbacks)
    ListPrice.objects.filter(region=catalog.east).update(price_per_gpu_hour=Decimal("2.01"))
    with django_capture_on_commit_callbacks(execute=True):
        payment = stripe_charges(reservation, card(stripe_api))
        arrives(client, payment, times=2)
    reservation.refresh_from_db()
    payment.refresh_from_db()
    assert reservation.state == S.EXPIRED
    assert reservation.allocations.filter(released_at__isnull=True).count() == 0
    assert (payment.status, payment.amount_refunded) == ("succeeded", Decimal("768.00"))
    refund = Refund.objects.get()
    assert (refund.amount, refund.status) == (Decimal("768.00"), "succeeded")
    assert "now costs $771.84" in refund.reason  # 2 x 8 x 24 h x $2.01
    assert FinanceFlag.objects.get().kind == "late_payment_refunded"
    assert ledger(organization) == [
        ("charge", Decimal("768.00")),
        ("credit", Decimal("-768.00")),
        ("payment", Decimal("-768.00")),
        ("refund", Decimal("768.00")),
    ]
    assert [m.subject for m in mail.outbox] == [f"Refund of 768.00 USD for {reservation.public_id}"]


def test_a_late_payment_whose_nodes_are_gone_is_refunded_in_full_once(
    catalog,
    organization,
    owner,
    other_organization,
    client,
    stripe_api,
    django_capture_on_commit_callbacks,
):
    reservation = held_reservation(organization, owner, catalog, nodes=8)
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        theirs = other_organization.memberships.get().user
        held_reservation(other_organization, theirs, catalog, nodes=8)
        held_reservation(other_organization, theirs, catalog, nodes=4)
        with django_capture_on_commit_callbacks(execute=True):
            payment = stripe_charges(reservation, card(stripe_api))
            arrives(client, payment, times=2)
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("succeeded", payment.amount)
    assert Refund.objects.get().amount == payment.amount == Decimal("3072.00")
    assert LedgerEntry.objects.filter(kind="refund").count() == 1
    assert len(mail.outbox) == 1


def test_a_late_payment_for_a_pool_no_longer_sold_is_refunded_in_full(
    catalog, organization, owner, client, stripe_api, django_capture_on_commit_callbacks
):
    reservation = _lapsed(catalog, organization, owner, django_capture_on_commit_callbacks)
    ListPrice.objects.filter(region=catalog.east).delete()
    with django_capture_on_commit_callbacks(execute=True):
        payment = stripe_charges(reservation, card(stripe_api))
        arrives(client, payment)
    payment.refresh_from_db()
    reservation.refresh_from_db()
    assert (reservation.state, payment.amount_refunded) == (S.EXPIRED, Decimal("768.00"))
    assert Refund.objects.get().reason.endswith("H100 is no longer sold in US East.")
