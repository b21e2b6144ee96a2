"""Invoices and disputes: localstripe has neither standalone invoices nor disputes, so these
tests answer those Stripe calls with a fake at the HTTP boundary (the `responses` library),
shaped like Stripe's API; every other call still goes to the real localstripe."""

import json
import re
import time
from decimal import Decimal

import pytest
import requests
import responses

from accounts.models import Organization
from billing import selectors
from billing.models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund
from billing.services import disputes, invoices, payments, reconciliation, refunds, settlement
from capacity.models import Reservation
from core.models import AuditEvent

from .conftest import SECRET_KEY, card, held_reservation, stripe_charges

pytestmark = pytest.mark.usefixtures("stripe_api")


def invoice_json(invoice_id: str, status: str, customer: str, amount: int) -> dict:
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "status": status,
        "number": "HB-0001",
        "amount_due": amount,
        "currency": "usd",
        "collection_method": "send_invoice",
        "due_date": 1767225600,
        "hosted_invoice_url": "https://invoice.stripe.test/i/in_test_1",
        "metadata": {},
    }


@pytest.fixture
def fake_stripe_invoices(stripe_api):
    """The invoice endpoints, answered like Stripe; the rest passes through to localstripe."""
    calls = []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(stripe_api)
        state = {"status": "draft", "customer": "", "amount": 0}

        def create(request):
            body = dict(x.split("=", 1) for x in request.body.split("&"))
            state["customer"] = body["customer"]
            calls.append(("create", request.headers.get("Idempotency-Key"), body))
            return 200, {}, json.dumps(invoice_json("in_test_1", "draft", body["customer"], 0))

        def item(request):
            body = dict(x.split("=", 1) for x in request.body.split("&"))
            state["amount"] = int(body["amount"])
            calls.append(("item", request.headers.get("Idempotency-Key"), body))
            return (
                200,
                {},
                json.dumps({"id": "ii_test_1", "object": "invoiceitem", "amount": state["amount"]}),
            )

        def transition(status):
            def handler(request):
                state["status"] = status
                calls.append((status, request.headers.get("Idempotency-Key"), {}))
                return (
                    200,
                    {},
                    json.dumps(
                        invoice_json("in_test_1", status, state["customer"], state["amount"])
                    ),
                )

            return handler

        def retrieve(request):
            return (
                200,
                {},
                json.dumps(
                    invoice_json("in_test_1", state["status"], state["customer"], state["amount"])
                ),
            )

        base = re.escape(stripe_api)
        mock.add_callback(responses.POST, re.compile(base + r"/v1/invoices$"), callback=create)
        mock.add_callback(responses.POST, re.compile(base + r"/v1/invoiceitems$"), callback=item)
        mock.add_callback(
            responses.POST,
            re.compile(base + r"/v1/invoices/in_test_1/finalize$"),
            callback=transition("open"),
        )
        mock.add_callback(
            responses.POST,
            re.compile(base + r"/v1/invoices/in_test_1/send$"),
            callback=transition("open"),
        )
        mock.add_callback(
            responses.GET, re.compile(base + r"/v1/invoices/in_test_1$"), callback=retrieve
        )
        yield calls, state


def test_invoice_terms_create_a_net_n_invoice_once(
    catalog, organization, owner, fake_stripe_invoices
):
    calls, state = fake_stripe_invoices
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", payment_days=45, credit_limit=Decimal("10000")
    )
    organization.refresh_from_db()
    reservation = held_reservation(organization, owner, catalog)
    settlement.reservation_settle(reservation_id=reservation.pk)
    settlement.reservation_settle(reservation_id=reservation.pk)
    invoice = Invoice.objects.get()
    assert (invoice.stripe_invoice_id, invoice.number, invoice.status, invoice.amount) == (
        "in_test_1",
        "HB-0001",
        "open",
        Decimal("768.00"),
    )
    assert [c[0] for c in calls] == ["create", "item", "open", "open"]
    create = calls[0][2]
    assert (create["collection_method"], create["days_until_due"]) == ("send_invoice", "45")
    assert calls[0][1] == f"invoice:{reservation.public_id}:invoice"
    assert calls[1][2]["amount"] == "76800"
    assert selectors.balance_for_org(organization) == Decimal("768.00")
    # Paid later: the webhook handler books it once.
    state["status"] = "paid"
    invoices.invoice_sync(stripe_invoice_id="in_test_1")
    invoices.invoice_sync(stripe_invoice_id="in_test_1")
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    assert LedgerEntry.objects.filter(kind="invoice_payment").count() == 1
    [paid] = AuditEvent.objects.filter(action="invoice.paid")
    assert (paid.actor_kind, paid.object_id, paid.data) == (
        "system",
        str(invoice.pk),
        {"from": "open", "paid": "768.00", "currency": "usd"},
    )


def test_a_failed_invoice_payment_is_flagged(catalog, organization, owner, fake_stripe_invoices):
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", credit_limit=10000
    )
    organization.refresh_from_db()
    reservation = held_reservation(organization, owner, catalog)
    settlement.reservation_settle(reservation_id=reservation.pk)
    invoices.invoice_failure_record(stripe_invoice_id="in_test_1")
    invoices.invoice_failure_record(stripe_invoice_id="in_test_1")
    assert Invoice.objects.get().payment_failed is True
    assert list(FinanceFlag.objects.values_list("kind", flat=True)) == ["invoice_failed"]
    events = AuditEvent.objects.filter(action__in=["invoice.payment_failed", "finance_flag.raised"])
    assert sorted(events.values_list("action", "organization_id", "reason")) == [
        ("finance_flag.raised", organization.pk, "Payment of invoice HB-0001 failed."),
        ("invoice.payment_failed", organization.pk, ""),
    ]


def test_a_dispute_flags_the_payment(catalog, organization, owner, stripe_api):
    payment = payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog),
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="d",
    )
    dispute = {
        "id": "dp_test_1",
        "object": "dispute",
        "amount": 76800,
        "currency": "usd",
        "reason": "fraudulent",
        "status": "needs_response",
        "payment_intent": payment.stripe_payment_intent_id,
        "charge": "ch_x",
    }
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_passthru(stripe_api)
        mock.add(responses.GET, f"{stripe_api}/v1/disputes/dp_test_1", json=dispute)
        disputes.dispute_record(dispute_id="dp_test_1")
    payment.refresh_from_db()
    assert payment.flagged is True
    assert payment.flag_reason == "Dispute dp_test_1 over $768.00: fraudulent."
    assert FinanceFlag.objects.get().kind == "dispute"
    disputed = AuditEvent.objects.get(action="payment.disputed")
    assert (disputed.object_id, disputed.reason, disputed.data) == (
        str(payment.pk),
        "fraudulent",
        {"dispute": "dp_test_1", "amount": "768.00", "currency": "usd"},
    )
    raised = AuditEvent.objects.get(action="finance_flag.raised")
    assert raised.data == {"kind": "dispute", "stripe_object": "dp_test_1"}


def test_a_refund_made_in_stripe_is_booked_once(catalog, organization, owner, stripe_api):
    payment = payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog),
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="r",
    )
    response = requests.post(
        f"{stripe_api}/v1/refunds",
        data={"payment_intent": payment.stripe_payment_intent_id, "amount": 10000},
        auth=(SECRET_KEY, ""),
        timeout=10,
    )
    response.raise_for_status()
    refunds.refunds_sync(payment_intent_id=payment.stripe_payment_intent_id)
    refunds.refunds_sync(payment_intent_id=payment.stripe_payment_intent_id)
    refund = Refund.objects.get()
    assert (refund.amount, refund.status, refund.reason) == (
        Decimal("100.00"),
        "succeeded",
        "Refunded in Stripe.",
    )
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("100.00")


def test_reconciliation_records_each_difference_once(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    paid_behind_our_back = stripe_charges(reservation, card(stripe_api))
    assert reconciliation.payments_reconcile() == 1
    assert reconciliation.payments_reconcile() == 0
    flag = FinanceFlag.objects.get(kind="reconciliation")
    raised = AuditEvent.objects.get(action="finance_flag.raised")
    assert (raised.object_id, raised.actor_kind, raised.reason) == (
        str(flag.pk),
        "system",
        flag.detail,
    )
    assert flag.stripe_object_id == paid_behind_our_back.stripe_payment_intent_id
    assert (
        flag.detail
        == f"{paid_behind_our_back.public_id} is pending here but paid in Stripe; applied now."
    )
    paid_behind_our_back.refresh_from_db()
    reservation.refresh_from_db()
    assert (paid_behind_our_back.status, reservation.state) == (
        "succeeded",
        Reservation.State.SCHEDULED,
    )


def test_reconciliation_finds_a_payment_marked_paid_that_stripe_does_not_know(
    organization, stripe_api, catalog, owner
):
    reservation = held_reservation(organization, owner, catalog)
    ghost = Payment.objects.create(
        organization=organization,
        reservation=reservation,
        attempt_token="ghost",
        amount=reservation.total,
        currency="usd",
        status="succeeded",
        stripe_payment_intent_id="pi_ghost_" + str(int(time.time())),
    )
    assert reconciliation.payments_reconcile() == 1
    assert (
        FinanceFlag.objects.get().detail == f"{ghost.public_id} is paid here but unknown to Stripe."
    )
