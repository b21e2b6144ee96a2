from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from accounts.models import Organization
from billing import gateway, selectors
from billing.gateway import PaymentError
from billing.models import FinanceFlag, LedgerEntry, Payment, Refund
from billing.services import accounts, cards, payments, refunds, settlement
from capacity import services as capacity_services
from capacity.models import Reservation
from core import errors
from core.models import AuditEvent

from .conftest import (
    DECLINED,
    THREE_D_SECURE,
    authenticate,
    card,
    held_reservation,
    stripe_charges,
)

S = Reservation.State
pytestmark = pytest.mark.usefixtures("stripe_api")


def ledger(org) -> list[tuple[str, Decimal]]:
    return sorted(LedgerEntry.objects.filter(organization=org).values_list("kind", "amount"))


def pay(reservation, user, api, number="4242424242424242", attempt="attempt-1"):
    return payments.payment_by_card_create(
        reservation=reservation,
        actor=user,
        payment_method_id=card(api, number),
        attempt_token=attempt,
    )


def test_paying_by_card_confirms_books_and_mails_a_receipt(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    with django_capture_on_commit_callbacks(execute=True):
        payment = pay(reservation, owner, stripe_api)
    payment.refresh_from_db()
    assert (payment.status, payment.amount, payment.currency) == (
        "succeeded",
        Decimal("768.00"),
        "usd",
    )
    assert (payment.card_brand, payment.card_last4) == ("visa", "4242")
    assert payment.stripe_payment_intent_id.startswith("pi_")
    reservation.refresh_from_db()
    assert reservation.state == S.SCHEDULED
    assert ledger(organization) == [("charge", Decimal("768.00")), ("payment", Decimal("-768.00"))]
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    assert [(m.subject, m.to) for m in mail.outbox] == [
        (f"Reservation {reservation.public_id} is confirmed", [owner.email]),
        (f"Receipt for reservation {reservation.public_id}", [organization.billing_email]),
    ]


def test_the_same_attempt_twice_charges_once(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    method = card(stripe_api)
    first = payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=method, attempt_token="a"
    )
    again = payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=method, attempt_token="a"
    )
    assert first.pk == again.pk
    assert Payment.objects.count() == 1
    assert LedgerEntry.objects.filter(kind="payment").count() == 1


def test_a_declined_card_can_be_retried_until_it_works(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    with pytest.raises(PaymentError) as excinfo:
        pay(reservation, owner, stripe_api, DECLINED, attempt="first")
    assert excinfo.value.code == "card_declined"
    assert excinfo.value.message == "Your card was declined."
    failed = Payment.objects.get()
    assert (failed.status, failed.failure_message) == ("failed", "Your card was declined.")
    reservation.refresh_from_db()
    assert reservation.state == S.HELD
    assert ledger(organization) == []
    payment = pay(reservation, owner, stripe_api, attempt="second")
    assert payment.status == "succeeded"
    reservation.refresh_from_db()
    assert reservation.state == S.SCHEDULED
    assert sorted(Payment.objects.values_list("status", flat=True)) == ["failed", "succeeded"]


def test_three_d_secure_waits_for_the_customer_then_completes(
    catalog, organization, owner, stripe_api
):
    reservation = held_reservation(organization, owner, catalog)
    payment = pay(reservation, owner, stripe_api, THREE_D_SECURE)
    assert payment.status == "requires_action"
    reservation.refresh_from_db()
    assert reservation.state == S.HELD
    authenticate(stripe_api, payments.client_secret_for_payment(payment))
    synced = payments.payment_sync(payment_intent_id=payment.stripe_payment_intent_id)
    assert synced.status == "succeeded"
    reservation.refresh_from_db()
    assert reservation.state == S.SCHEDULED


def test_failed_three_d_secure_leaves_the_hold(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    payment = pay(reservation, owner, stripe_api, THREE_D_SECURE)
    authenticate(stripe_api, payments.client_secret_for_payment(payment), success=False)
    synced = payments.payment_sync(payment_intent_id=payment.stripe_payment_intent_id)
    payments.payment_sync(payment_intent_id=payment.stripe_payment_intent_id)
    assert synced.status == "failed"
    reservation.refresh_from_db()
    assert reservation.state == S.HELD
    [event] = AuditEvent.objects.filter(action="payment.failed")
    assert (event.actor_kind, event.object_id, event.data["from"], event.data["to"]) == (
        "system",
        str(payment.pk),
        "requires_action",
        "failed",
    )


def test_saved_card_pays_off_session(catalog, organization, owner, stripe_api):

    account = accounts.billing_account_ensure(organization)
    method = card(stripe_api)
    gateway.payment_method_attach(
        payment_method_id=method, customer_id=account.stripe_customer_id, idempotency_key="t"
    )
    cards.card_make_default(organization=organization, actor=owner, payment_method_id=method)
    reservation = held_reservation(organization, owner, catalog)
    payment = payments.payment_by_saved_card_create(
        reservation=reservation, actor=owner, attempt_token="x"
    )
    assert payment.status == "succeeded"
    assert [c.last4 for c in cards.cards_for_account(account)] == ["4242"]


def test_another_customers_card_is_refused(
    catalog, organization, owner, other_organization, stripe_api
):
    theirs = accounts.billing_account_ensure(other_organization)
    method = card(stripe_api)
    gateway.payment_method_attach(
        payment_method_id=method, customer_id=theirs.stripe_customer_id, idempotency_key="t2"
    )
    reservation = held_reservation(organization, owner, catalog)
    with pytest.raises(errors.NotAllowed, match="belongs to someone else"):
        payments.payment_by_card_create(
            reservation=reservation, actor=owner, payment_method_id=method, attempt_token="z"
        )
    assert Payment.objects.count() == 0


def test_late_payment_with_capacity_left_is_confirmed(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    method = card(stripe_api)
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        capacity_services.lapsed_holds_expire()
        reservation.refresh_from_db()
        assert reservation.state == S.EXPIRED
        # The card form was already open: its payment goes through after the hold lapsed.
        payment = _charge_regardless_of_hold(reservation, owner, method)
    reservation.refresh_from_db()
    assert (payment.status, reservation.state) == ("succeeded", S.SCHEDULED)
    assert Refund.objects.count() == 0


def test_late_payment_without_capacity_is_refunded_in_full(
    catalog, organization, owner, other_organization, stripe_api, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog, nodes=8)
    method = card(stripe_api)
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        theirs = other_organization.memberships.get().user
        held_reservation(other_organization, theirs, catalog, nodes=8)
        held_reservation(other_organization, theirs, catalog, nodes=4)
        with django_capture_on_commit_callbacks(execute=True):
            payment = _charge_regardless_of_hold(reservation, owner, method)
    payment.refresh_from_db()
    reservation.refresh_from_db()
    assert reservation.state == S.EXPIRED
    assert (payment.status, payment.amount_refunded) == ("succeeded", payment.amount)
    refund = Refund.objects.get()
    assert (refund.status, refund.amount) == ("succeeded", payment.amount)
    assert FinanceFlag.objects.get().kind == "late_payment_refunded"
    # Charged, paid, then credited back and refunded: nothing is owed either way.
    assert ledger(organization) == [
        ("charge", payment.amount),
        ("credit", -payment.amount),
        ("payment", -payment.amount),
        ("refund", payment.amount),
    ]
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    assert [m.subject for m in mail.outbox] == [
        f"Refund of {payment.amount} USD for {reservation.public_id}"
    ]


def _charge_regardless_of_hold(reservation, user, method):
    """Stripe charging a card form opened before the hold lapsed, then telling us."""
    payment = stripe_charges(reservation, method, attempt="late")
    return payments.payment_sync(payment_intent_id=payment.stripe_payment_intent_id)


def test_cancelling_refunds_per_the_policy(catalog, organization, owner, stripe_api):
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=10)
    reservation = held_reservation(organization, owner, catalog, start=start)
    payment = pay(reservation, owner, stripe_api)
    reservation.refresh_from_db()
    capacity_services.reservation_cancel(
        reservation=reservation, actor=owner, reason="Plans changed"
    )
    settlement.reservation_settle(reservation_id=reservation.pk)
    settlement.reservation_settle(reservation_id=reservation.pk)  # twice: refunds once
    payment.refresh_from_db()
    refund = Refund.objects.get()
    assert (refund.amount, refund.status, payment.amount_refunded) == (
        Decimal("768.00"),
        "succeeded",
        Decimal("768.00"),
    )
    assert selectors.balance_for_org(organization) == Decimal("0.00")


def test_refunding_more_than_was_paid_is_refused(catalog, organization, owner, stripe_api):
    payment = pay(held_reservation(organization, owner, catalog), owner, stripe_api)
    refunds.refund_issue(payment=payment, amount=Decimal("500.00"), reason="Goodwill", actor=owner)
    with pytest.raises(errors.ServiceError, match=r"At most \$268.00 can still be refunded"):
        refunds.refund_issue(
            payment=payment, amount=Decimal("268.01"), reason="Too much", actor=owner
        )
    assert Refund.objects.count() == 1
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("500.00")


def test_a_payment_for_a_canceled_reservation_is_refunded(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    method = card(stripe_api)
    capacity_services.reservation_cancel(reservation=reservation, actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        payment = _charge_regardless_of_hold(reservation, owner, method)
    payment.refresh_from_db()
    assert payment.amount_refunded == payment.amount
    reservation.refresh_from_db()
    assert reservation.state == S.CANCELED


def test_an_amount_that_does_not_match_is_flagged_not_fulfilled(
    catalog, organization, owner, stripe_api
):
    reservation = held_reservation(organization, owner, catalog)
    method = card(stripe_api)
    Reservation.objects.filter(pk=reservation.pk).update(total=Decimal("900.00"))
    reservation.refresh_from_db()
    payment = Payment.objects.create(
        organization=organization,
        reservation=reservation,
        attempt_token="m",
        amount=reservation.total,
        currency="usd",
    )
    account = accounts.billing_account_ensure(organization)
    intent = gateway.payment_intent_create(
        amount_minor=76800,
        currency="usd",
        customer_id=account.stripe_customer_id,
        metadata={},
        idempotency_key="mismatch",
        payment_method_id=method,
    )
    Payment.objects.filter(pk=payment.pk).update(stripe_payment_intent_id=intent.id)
    payments.payment_sync(payment_intent_id=intent.id)
    payment.refresh_from_db()
    reservation.refresh_from_db()
    assert (payment.status, payment.flagged, reservation.state) == ("succeeded", True, S.HELD)
    assert payment.flag_reason == "Stripe took $768.00, the reservation costs $900.00."
    assert FinanceFlag.objects.get().kind == "amount_mismatch"
    assert ledger(organization) == [("payment", Decimal("-768.00"))]


def test_members_of_the_billing_role_may_pay_but_strangers_may_not(
    catalog, organization, owner, other_organization, stripe_api
):
    from tests.conftest import member_of

    reservation = held_reservation(organization, owner, catalog)
    billing_member = member_of(organization, "billing")
    assert pay(reservation, billing_member, stripe_api).status == "succeeded"
    stranger = other_organization.memberships.get().user
    other = held_reservation(organization, owner, catalog)
    with pytest.raises(errors.NotAllowed):
        pay(other, stranger, stripe_api, attempt="s")
    assert Payment.objects.filter(reservation=other).count() == 0


def test_invoice_terms_skip_the_card(catalog, organization, owner, stripe_api):
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", credit_limit=10000
    )
    organization.refresh_from_db()
    reservation = held_reservation(organization, owner, catalog)
    assert reservation.state == S.SCHEDULED
    with pytest.raises(errors.Conflict, match="there is nothing to pay"):
        pay(reservation, owner, stripe_api)


def test_only_cards_the_customer_asked_to_keep_stay_saved(catalog, organization, owner, stripe_api):

    account = accounts.billing_account_ensure(organization)
    with pytest.raises(PaymentError):
        pay(
            held_reservation(organization, owner, catalog),
            owner,
            stripe_api,
            DECLINED,
            attempt="no",
        )
    pay(held_reservation(organization, owner, catalog), owner, stripe_api, attempt="once")
    assert cards.cards_for_account(account) == []
    kept = payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog),
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="keep",
        keep_card=True,
    )
    account.refresh_from_db()
    assert [c.last4 for c in cards.cards_for_account(account)] == ["4242"]
    assert (
        account.default_payment_method_id
        == gateway.payment_intent_retrieve(kept.stripe_payment_intent_id).payment_method
    )


def test_failed_provisioning_is_refunded_in_full(
    catalog, organization, owner, stripe_api, settings, django_capture_on_commit_callbacks
):
    settings.PROVISIONING_SIMULATED_FAILURE_RATE = 1.0
    settings.PROVISIONING_MAX_RETRIES = 1
    from capacity import provisioning

    reservation = held_reservation(organization, owner, catalog)
    payment = pay(reservation, owner, stripe_api)
    reservation.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)  # its start has come
    reservation.refresh_from_db()
    payment.refresh_from_db()
    assert reservation.state == S.FAILED
    assert (payment.amount_refunded, Refund.objects.get().reason) == (
        payment.amount,
        "Provisioning failed: full refund.",
    )
    assert selectors.balance_for_org(organization) == Decimal("0.00")


def test_a_reservation_paid_twice_keeps_one_payment_and_refunds_the_other(
    catalog, organization, owner, stripe_api
):
    """A client retried with a new attempt while the first was still pending, and Stripe took
    both. The second is booked as a duplicate, refunded in full, and the books balance."""
    reservation = held_reservation(organization, owner, catalog)
    first = stripe_charges(reservation, card(stripe_api), attempt="first")
    second = stripe_charges(reservation, card(stripe_api), attempt="second")
    payments.payment_sync(payment_intent_id=first.stripe_payment_intent_id)
    payments.payment_sync(payment_intent_id=second.stripe_payment_intent_id)
    payments.payment_sync(payment_intent_id=second.stripe_payment_intent_id)  # a redelivery
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("succeeded", "duplicate")
    assert (second.flagged, second.flag_reason, second.amount_refunded) == (
        True,
        "A second payment for an already paid reservation.",
        Decimal("768.00"),
    )
    [refund] = Refund.objects.all()
    assert (refund.payment, refund.status, refund.amount) == (
        second,
        "succeeded",
        Decimal("768.00"),
    )
    assert ledger(organization) == [
        ("charge", Decimal("768.00")),
        ("payment", Decimal("-768.00")),
        ("payment", Decimal("-768.00")),
        ("refund", Decimal("768.00")),
    ]
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    reservation.refresh_from_db()
    assert reservation.state == S.SCHEDULED
