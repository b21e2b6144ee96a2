"""Invoices and disputes: localstripe has neither standalone invoices nor disputes, so these
tests answer those Stripe calls with a fake at the HTTP boundary (the `responses` library),
shaped like Stripe's API; every other call still goes to the real localstripe."""

import json
import re
import time
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qsl

import pytest
import requests
import responses
from django.db import IntegrityError, transaction
from django.test import Client
from django.utils import timezone

from accounts import api_keys, credit
from accounts.models import ApiKey, Organization
from billing import selectors, tasks, webhooks
from billing.models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund, WebhookEvent
from billing.services import (
    disputes,
    extensions,
    flags,
    invoices,
    overdue,
    payments,
    reconciliation,
    refunds,
    settlement,
    sla,
)
from capacity import services as capacity_services
from capacity.models import Allocation, Reservation
from core.errors import Conflict
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


# --- Several invoices per reservation -----------------------------------------------------------
class FakeInvoices:
    """Stripe's invoices, invoice items, void and credit notes for any number of invoices,
    answered at the HTTP boundary; `fail` makes the next creations fail (a status code)."""

    def __init__(self) -> None:
        self.invoices: dict[str, dict] = {}
        self.calls: list[tuple[str, str | None, dict]] = []
        self.fail: list[int] = []
        self.on_send = None  # called as Stripe sends an invoice (to make a race happen then)
        self.notes: list[dict] = []

    def body(self, invoice_id: str) -> dict:
        invoice = self.invoices[invoice_id]
        body = invoice_json(invoice_id, invoice["status"], invoice["customer"], invoice["amount"])
        body.update(number=invoice["number"], total=invoice["amount"], due_date=invoice["due"])
        body["amount_paid"] = invoice["amount"] if invoice["status"] == "paid" else 0
        return body

    def create(self, request):
        form = dict(parse_qsl(request.body))
        self.calls.append(("create", request.headers.get("Idempotency-Key"), form))
        if self.fail:
            status = self.fail.pop(0)
            error = {"type": "invalid_request_error", "message": "Refused by the test."}
            return status, {}, json.dumps({"error": error})
        invoice_id = f"in_test_{len(self.invoices) + 1}"
        self.invoices[invoice_id] = {
            "status": "draft", "customer": form["customer"], "amount": 0,
            "number": f"HB-{len(self.invoices) + 1:04d}",
            "due": int(time.time()) + 30 * 86400,
        }  # fmt: skip
        return 200, {}, json.dumps(self.body(invoice_id))

    def item(self, request):
        form = dict(parse_qsl(request.body))
        self.invoices[form["invoice"]]["amount"] += int(form["amount"])
        self.calls.append(("item", request.headers.get("Idempotency-Key"), form))
        return 200, {}, json.dumps({"id": "ii_test", "object": "invoiceitem"})

    def action(self, request):
        invoice_id, step = request.url.rsplit("/", 2)[-2:]
        self.calls.append((f"{step}:{invoice_id}", request.headers.get("Idempotency-Key"), {}))
        invoice = self.invoices[invoice_id]
        invoice["status"] = {"finalize": "open", "send": invoice["status"], "void": "void"}[step]
        if step == "send" and self.on_send is not None:
            self.on_send()
        return 200, {}, json.dumps(self.body(invoice_id))

    def retrieve(self, request):
        return 200, {}, json.dumps(self.body(request.url.rsplit("/", 1)[-1]))

    def credit_note(self, request):
        form = dict(parse_qsl(request.body))
        self.calls.append((f"credit_note:{form['invoice']}", request.headers.get(
            "Idempotency-Key"), form))  # fmt: skip
        note = {"id": f"cn_test_{len(self.notes) + 1}", "object": "credit_note", **form}
        note.update(amount=int(form["amount"]), currency="usd", status="issued")
        self.notes.append(note)
        return 200, {}, json.dumps(note)

    # What check_books reads back: the customer's invoices, their credit notes and payments.
    def listing(self, request):
        query = dict(parse_qsl(request.url.split("?", 1)[1] if "?" in request.url else ""))
        path = request.url.split("?", 1)[0]
        if path.endswith("/v1/invoices"):
            data = [
                self.body(i) for i, v in self.invoices.items()
                if v["customer"] == query.get("customer")
            ]  # fmt: skip
        elif path.endswith("/v1/credit_notes"):
            data = [n for n in self.notes if n["invoice"] == query.get("invoice", n["invoice"])]
        else:
            data = []  # invoice payments: these invoices are never paid by card here
        return 200, {}, json.dumps({"object": "list", "data": data, "has_more": False})

    def steps(self) -> list[str]:
        return [c[0] for c in self.calls if c[0] != "item" and not c[0].startswith("send")]


@pytest.fixture
def stripe_invoices(stripe_api):
    fake = FakeInvoices()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(stripe_api)
        base = re.escape(stripe_api)
        mock.add_callback(responses.POST, re.compile(base + r"/v1/invoices$"), fake.create)
        mock.add_callback(responses.POST, re.compile(base + r"/v1/invoiceitems$"), fake.item)
        mock.add_callback(
            responses.POST,
            re.compile(base + r"/v1/invoices/in_test_\d+/(finalize|send|void)$"),
            fake.action,
        )
        mock.add_callback(
            responses.GET, re.compile(base + r"/v1/invoices/in_test_\d+$"), fake.retrieve
        )
        mock.add_callback(responses.POST, re.compile(base + r"/v1/credit_notes$"), fake.credit_note)
        for listed in ("invoices", "credit_notes", "invoice_payments"):
            mock.add_callback(
                responses.GET, re.compile(base + rf"/v1/{listed}(\?.*)?$"), fake.listing
            )
        yield fake


def on_invoice_terms(organization, limit: str = "10000") -> None:
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", payment_days=30, credit_limit=Decimal(limit)
    )
    organization.refresh_from_db()


def test_the_database_holds_one_invoice_per_block(catalog, organization, owner):
    reservation = held_reservation(organization, owner, catalog)
    Invoice.objects.create(
        organization=organization, reservation=reservation, amount=Decimal("1.00"), currency="usd"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Invoice.objects.create(
            organization=organization,
            reservation=reservation,
            amount=Decimal("1.00"),
            currency="usd",
        )
    assert reservation.invoices.count() == 1


def test_a_failed_invoice_creation_is_retried_by_the_sweep_then_flagged_once(
    catalog, organization, owner, stripe_invoices, settings
):
    settings.INVOICE_CREATE_MAX_ATTEMPTS = 3
    on_invoice_terms(organization)
    stripe_invoices.fail = [400, 400, 400]
    reservation = held_reservation(organization, owner, catalog)
    for expected in (1, 2, 3):
        assert tasks.settle_pending() == 1  # the sweep finds it and settles it (eager here)
        invoice = Invoice.objects.get()
        assert (invoice.attempts, invoice.stripe_invoice_id) == (expected, None)
    # A definite refusal is not asked again under the same key (Stripe would answer the same).
    assert [c[1] for c in stripe_invoices.calls] == [
        f"invoice:{reservation.public_id}:invoice",
        f"invoice:{reservation.public_id}:v1:invoice",
        f"invoice:{reservation.public_id}:v2:invoice",
    ]
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.stripe_object_id, flag.organization_id) == (
        "invoice_not_sent",
        f"invoice:{invoice.pk}",
        organization.pk,
    )
    assert flag.detail == (
        f"Invoice {invoice.pk} ($768.00) for {reservation.public_id} could not be created at "
        "Stripe after 3 tries: The payment could not be processed. Fix the cause and send it "
        "again (the invoice's 'Send again' action), then resolve this flag."
    )
    # After the last try the sweep leaves it to finance: nothing more is sent or flagged.
    assert tasks.settle_pending() == 0
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert (len(stripe_invoices.calls), FinanceFlag.objects.count()) == (3, 1)
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    # Still counted against the credit line: it was sold on credit.
    assert selectors.credit_used_for_org(organization) == Decimal("768.00")


def test_an_invoice_that_failed_once_is_sent_by_the_sweep(
    catalog, organization, owner, stripe_invoices
):
    on_invoice_terms(organization)
    stripe_invoices.fail = [400]
    reservation = held_reservation(organization, owner, catalog)
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert Invoice.objects.get().last_error == "The payment could not be processed."
    assert tasks.settle_pending() == 1  # and settles it (eager here)
    invoice = Invoice.objects.get()
    assert (invoice.stripe_invoice_id, invoice.status, invoice.amount) == (
        "in_test_1", "open", Decimal("768.00"),
    )  # fmt: skip
    assert list(LedgerEntry.objects.values_list("kind", "amount", "invoice")) == [
        ("charge", Decimal("768.00"), invoice.pk)
    ]
    assert tasks.settle_pending() == 0
    assert FinanceFlag.objects.count() == 0


def days_out(days: int):
    return timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=days)


def invoiced_with_extension(catalog, organization, owner, start) -> Reservation:
    """A block on invoice terms (768.00, in_test_1) extended by 2 h (64.00, in_test_2)."""
    on_invoice_terms(organization)
    reservation = held_reservation(organization, owner, catalog, start=start)
    settlement.reservation_settle(reservation_id=reservation.pk)
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=2, attempt_token="more"
    )
    assert (started.extension.state, started.invoice.stripe_invoice_id) == ("paid", "in_test_2")
    reservation.refresh_from_db()
    assert reservation.total == Decimal("832.00")
    return reservation


def test_a_block_and_its_extension_are_two_invoices_with_their_own_keys(
    catalog, organization, owner, stripe_invoices
):
    reservation = invoiced_with_extension(catalog, organization, owner, days_out(10))
    extension = reservation.extensions.get()
    creates = [(c[1], c[2]["metadata[reservation]"]) for c in stripe_invoices.calls
               if c[0] == "create"]  # fmt: skip
    assert creates == [
        (f"invoice:{reservation.public_id}:invoice", reservation.public_id),
        (f"invoice:{extension.public_id}:invoice", reservation.public_id),
    ]
    assert sorted(reservation.invoices.values_list("stripe_invoice_id", "extension", "amount")) == [
        ("in_test_1", None, Decimal("768.00")),
        ("in_test_2", extension.pk, Decimal("64.00")),
    ]
    assert stripe_invoices.invoices["in_test_2"]["amount"] == 6400
    booked = LedgerEntry.objects.values_list("kind", "amount", "invoice__stripe_invoice_id")
    assert sorted(booked) == [
        ("charge", Decimal("64.00"), "in_test_2"),
        ("charge", Decimal("768.00"), "in_test_1"),
    ]  # fmt: skip
    assert selectors.credit_used_for_org(organization) == Decimal("832.00")
    # A block settled again sends nothing more.
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert Invoice.objects.count() == 2
    assert len([c for c in stripe_invoices.calls if c[0] == "create"]) == 2


def test_a_cancellation_credits_the_latest_invoice_first_up_to_the_refund_once(
    catalog, organization, owner, stripe_invoices
):
    # Three days out: the policy gives back 50% of 832.00 = 416.00.
    reservation = invoiced_with_extension(catalog, organization, owner, days_out(3))
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    reservation.refresh_from_db()
    assert reservation.refund_due == Decimal("416.00")
    for _ in range(3):
        settlement.reservation_settle(reservation_id=reservation.pk)
    # The extension's open invoice is credited in full (void), the rest is a credit note on
    # the block's: 64.00 + 352.00.
    assert stripe_invoices.steps()[-2:] == ["void:in_test_2", "credit_note:in_test_1"]
    [note] = [c for c in stripe_invoices.calls if c[0].startswith("credit_note")]
    assert (note[1], note[2]["amount"]) == ("credit:in_test_1", "35200")
    assert sorted(LedgerEntry.objects.filter(kind="credit").values_list(
        "invoice__stripe_invoice_id", "amount", "invoice__status")) == [
        ("in_test_1", Decimal("-352.00"), "open"),
        ("in_test_2", Decimal("-64.00"), "void"),
    ]  # fmt: skip
    assert selectors.balance_for_org(organization) == Decimal("416.00")
    assert tasks.settle_pending() == 0


def test_a_failed_block_credits_every_invoice_in_full(
    catalog, organization, owner, stripe_invoices
):
    reservation = invoiced_with_extension(catalog, organization, owner, days_out(3))
    Reservation.objects.filter(pk=reservation.pk).update(state=Reservation.State.FAILED)
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert sorted(s for s in stripe_invoices.steps() if s.startswith("void")) == [
        "void:in_test_1", "void:in_test_2",
    ]  # fmt: skip
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    assert LedgerEntry.objects.filter(kind="credit").count() == 2


def test_a_canceled_block_whose_invoice_never_went_out_is_invoiced_what_it_keeps(
    catalog, organization, owner, stripe_invoices
):
    on_invoice_terms(organization)
    stripe_invoices.fail = [400]
    reservation = held_reservation(organization, owner, catalog, start=days_out(3))
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert Invoice.objects.get().stripe_invoice_id is None
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    reservation.refresh_from_db()
    assert reservation.refund_due == Decimal("384.00")  # 50% of 768.00
    assert tasks.settle_pending() == 1  # and settles it (eager here)
    invoice = Invoice.objects.get()
    assert (invoice.stripe_invoice_id, invoice.amount) == ("in_test_1", Decimal("384.00"))
    assert stripe_invoices.invoices["in_test_1"]["amount"] == 38400
    assert list(LedgerEntry.objects.values_list("kind", "amount")) == [
        ("charge", Decimal("384.00"))
    ]
    # Nothing is credited on top: the refund was taken off before it went out.
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert LedgerEntry.objects.count() == 1
    assert len([c for c in stripe_invoices.calls if c[0] == "create"]) == 2
    assert tasks.settle_pending() == 0


def test_a_canceled_block_refunded_in_full_before_its_invoice_went_out_bills_nothing(
    catalog, organization, owner, stripe_invoices
):
    on_invoice_terms(organization)
    stripe_invoices.fail = [400]
    reservation = held_reservation(organization, owner, catalog, start=days_out(10))
    settlement.reservation_settle(reservation_id=reservation.pk)
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert list(Invoice.objects.values_list("status", "stripe_invoice_id")) == [("void", None)]
    assert LedgerEntry.objects.count() == 0
    assert len(stripe_invoices.calls) == 1
    assert tasks.settle_pending() == 0


# --- Overdue invoices, uncollectible ones, lost disputes ------------------------------------------
@pytest.fixture
def finance_user(db):
    from backoffice.roles import FINANCE
    from tests.backoffice.conftest import make_staff

    return make_staff(FINANCE)


def sent_block(catalog, organization, owner) -> Invoice:
    on_invoice_terms(organization)
    reservation = held_reservation(organization, owner, catalog)
    settlement.reservation_settle(reservation_id=reservation.pk)
    return reservation.invoices.get()


def test_overdue_reminders_go_out_at_one_and_seven_days_each_once(
    catalog, organization, owner, stripe_invoices, mailoutbox, django_capture_on_commit_callbacks
):
    invoice = sent_block(catalog, organization, owner)
    Invoice.objects.filter(pk=invoice.pk).update(due_at=timezone.now() - timedelta(hours=12))
    assert overdue.invoice_reminders_send() == 0  # not a day late yet
    Invoice.objects.filter(pk=invoice.pk).update(due_at=timezone.now() - timedelta(days=1, hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert overdue.invoice_reminders_send() == 1
        assert overdue.invoice_reminders_send() == 0
    [mail] = mailoutbox
    assert mail.subject == "Invoice HB-0001 is 1 day overdue"
    assert mail.to == [organization.billing_email]
    assert "($768.00) was due on" in mail.body
    assert "Once an invoice is 14 days overdue" in mail.body
    Invoice.objects.filter(pk=invoice.pk).update(due_at=timezone.now() - timedelta(days=7, hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.remind_overdue_invoices() == 1
        assert tasks.remind_overdue_invoices() == 0
    assert [m.subject for m in mailoutbox] == [
        "Invoice HB-0001 is 1 day overdue",
        "Invoice HB-0001 is 7 days overdue",
    ]
    assert list(invoice.reminders.values_list("days_overdue", flat=True)) == [1, 7]
    # Paid: no more reminders.
    stripe_invoices.invoices["in_test_1"]["status"] = "paid"
    invoices.invoice_sync(stripe_invoice_id="in_test_1")
    Invoice.objects.filter(pk=invoice.pk).update(due_at=timezone.now() - timedelta(days=30))
    assert overdue.invoice_reminders_send() == 0


def test_new_reservations_are_refused_at_fourteen_days_overdue_until_paid(
    catalog, organization, owner, stripe_invoices, settings
):
    invoice = sent_block(catalog, organization, owner)
    reservation = invoice.reservation
    Invoice.objects.filter(pk=invoice.pk).update(due_at=timezone.now() - timedelta(days=13))
    assert selectors.reservations_refused_for_org(organization) is None
    Invoice.objects.filter(pk=invoice.pk).update(due_at=timezone.now() - timedelta(days=15))
    message = (
        "Invoice HB-0001 ($768.00) is 15 days overdue, so new reservations are paused. Pay it "
        "and you can reserve again at once."
    )
    with pytest.raises(credit.ReservationsRefused) as refused:
        held_reservation(organization, owner, catalog)
    assert (refused.value.message, refused.value.code) == (message, "reservations_refused")
    with pytest.raises(Conflict) as refused_extension:
        extensions.extension_start(reservation=reservation, actor=owner, hours=1, attempt_token="x")
    assert refused_extension.value.message == message
    assert (Reservation.objects.count(), reservation.extensions.count()) == (1, 0)
    # Through the API: a 409 with the reason, nothing held.
    key = api_keys.api_key_create(
        organization=organization, actor=owner, name="ci",
        scopes=[ApiKey.Scope.RESERVATIONS_READ, ApiKey.Scope.RESERVATIONS_WRITE],
    )[1]  # fmt: skip
    response = Client(HTTP_AUTHORIZATION=f"Bearer {key}").post(
        "/api/v1/reservations/",
        {"gpu_model": "h100", "region": "us-east", "node_count": 1, "duration_hours": 2},
        content_type="application/json",
    )
    assert (response.status_code, response.json()["error"]["code"]) == (409, "reservations_refused")
    assert Reservation.objects.count() == 1
    settings.INVOICE_REFUSE_AFTER_DAYS = 30
    assert selectors.reservations_refused_for_org(organization) is None
    settings.INVOICE_REFUSE_AFTER_DAYS = 14
    stripe_invoices.invoices["in_test_1"]["status"] = "paid"
    invoices.invoice_sync(stripe_invoice_id="in_test_1")
    assert held_reservation(organization, owner, catalog).state == "scheduled"


def test_an_invoice_marked_uncollectible_is_flagged_and_pauses_reservations(
    catalog, organization, owner, stripe_invoices, finance_user
):
    invoice = sent_block(catalog, organization, owner)
    stripe_invoices.invoices["in_test_1"]["status"] = "uncollectible"
    for n in range(2):
        stored = WebhookEvent.objects.create(
            stripe_event_id=f"evt_unc_{n}", type="invoice.marked_uncollectible",
            object_id="in_test_1", payload={},
        )  # fmt: skip
        assert webhooks.webhook_process(stored.pk) == "processed"
    invoice.refresh_from_db()
    assert invoice.status == "uncollectible"
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.stripe_object_id, flag.organization_id) == (
        "invoice_uncollectible", "in_test_1", organization.pk,
    )  # fmt: skip
    # Still owed in the ledger (it was sold); no new reservations until finance resolves it.
    assert selectors.balance_for_org(organization) == Decimal("768.00")
    with pytest.raises(credit.ReservationsRefused, match="written off as uncollectible"):
        held_reservation(organization, owner, catalog)
    flags.flag_resolve(flag=flag, actor=finance_user, resolution="Agreed a payment plan.")
    assert selectors.reservations_refused_for_org(organization) is None


def dispute(payment: Payment, status: str) -> dict:
    return {
        "id": "dp_test_2", "object": "dispute", "amount": 76800, "currency": "usd",
        "reason": "fraudulent", "status": status,
        "payment_intent": payment.stripe_payment_intent_id, "charge": "ch_x",
    }  # fmt: skip


def test_a_lost_dispute_books_the_loss_once_flags_finance_and_pauses_reservations(
    catalog, organization, owner, stripe_api, finance_user
):
    payment = payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog),
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="d",
    )
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(stripe_api)
        mock.add(responses.GET, f"{stripe_api}/v1/disputes/dp_test_2", json=dispute(payment, "won"))
        disputes.dispute_close_record(dispute_id="dp_test_2")  # won: nothing moves
        assert LedgerEntry.objects.filter(kind="dispute_loss").count() == 0
        assert FinanceFlag.objects.count() == 0
        mock.replace(
            responses.GET, f"{stripe_api}/v1/disputes/dp_test_2", json=dispute(payment, "lost")
        )
        for n in range(2):
            stored = WebhookEvent.objects.create(
                stripe_event_id=f"evt_lost_{n}", type="charge.dispute.closed",
                object_id="dp_test_2", payload={},
            )  # fmt: skip
            assert webhooks.webhook_process(stored.pk) == "processed"
    [loss] = LedgerEntry.objects.filter(kind="dispute_loss")
    assert (loss.amount, loss.payment_id, loss.reservation_id) == (
        Decimal("768.00"), payment.pk, payment.reservation_id,
    )  # fmt: skip
    assert selectors.balance_for_org(organization) == Decimal("768.00")  # owed again
    from backoffice.dashboard import revenue

    this_month = revenue(timezone.now())[0]
    assert (this_month.booked, this_month.collected) == (Decimal("768.00"), Decimal("0.00"))
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.payment_id, flag.organization_id) == (
        "dispute_lost", payment.pk, organization.pk,
    )  # fmt: skip
    assert AuditEvent.objects.filter(action="payment.dispute_lost").count() == 1
    with pytest.raises(credit.ReservationsRefused) as refused:
        held_reservation(organization, owner, catalog)
    assert refused.value.message == (
        f"New reservations are paused for {organization.name}: a payment was disputed and the "
        "dispute was lost. Contact your account manager or billing support to settle it."
    )
    flags.flag_resolve(flag=flag, actor=finance_user, resolution="Customer paid by wire.")
    assert held_reservation(organization, owner, catalog).state == "held"


def test_an_extension_invoice_sent_as_the_block_is_canceled_is_withdrawn_and_the_books_agree(
    catalog, organization, owner, stripe_invoices
):
    from billing.services import books

    on_invoice_terms(organization)
    reservation = held_reservation(organization, owner, catalog, start=days_out(10))
    settlement.reservation_settle(reservation_id=reservation.pk)
    # The customer cancels while Stripe is sending the extension's invoice.
    stripe_invoices.on_send = lambda: capacity_services.reservation_cancel(
        reservation=reservation, actor=owner, reason="Plans"
    )
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=2, attempt_token="x"
    )
    stripe_invoices.on_send = None
    assert (started.extension.state, started.invoice.stripe_invoice_id) == ("canceled", "in_test_2")
    assert "void:in_test_2" in stripe_invoices.steps()
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    reservation.refresh_from_db()
    assert (reservation.state, reservation.total, reservation.refund_due) == (
        "canceled", Decimal("768.00"), Decimal("768.00"),
    )  # fmt: skip
    # The block's invoice is credited the refund; the withdrawn one counts for nothing.
    booked = LedgerEntry.objects.values_list("kind", "amount", "invoice__stripe_invoice_id")
    assert sorted(booked) == [
        ("charge", Decimal("64.00"), "in_test_2"),
        ("charge", Decimal("768.00"), "in_test_1"),
        ("credit", Decimal("-768.00"), "in_test_1"),
        ("credit", Decimal("-64.00"), "in_test_2"),
    ]  # fmt: skip
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    report = books.books_check(grace=timedelta(0), raise_flags=False)
    assert report.differences == []


def test_a_withdrawn_extension_invoice_is_no_part_of_what_a_live_block_was_sold_for(
    catalog, organization, owner, stripe_invoices
):
    from billing.services import books

    on_invoice_terms(organization)
    reservation = held_reservation(organization, owner, catalog, start=days_out(10))
    settlement.reservation_settle(reservation_id=reservation.pk)
    # While Stripe sends the extension's invoice the block's end moves earlier (a reclaim):
    # the extension no longer starts where the block ends and cannot be applied.
    end = reservation.ends_at
    stripe_invoices.on_send = lambda: Reservation.objects.filter(pk=reservation.pk).update(
        ends_at=end - timedelta(hours=1)
    )
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=2, attempt_token="x"
    )
    assert (started.extension.state, started.invoice.status) == ("canceled", "void")
    assert Allocation.objects.filter(extension__isnull=False, released_at__isnull=True).count() == 0
    reservation.refresh_from_db()
    assert (reservation.state, reservation.total) == ("scheduled", Decimal("768.00"))
    assert selectors.balance_for_org(organization) == Decimal("768.00")
    report = books.books_check(grace=timedelta(0), raise_flags=False)
    assert report.differences == []


def invoice_failed_for_good(catalog, organization, owner, stripe_invoices, settings) -> Invoice:
    """A block on invoice terms whose invoice Stripe refused on its one allowed try."""
    settings.INVOICE_CREATE_MAX_ATTEMPTS = 1
    on_invoice_terms(organization)
    stripe_invoices.fail = [400]
    reservation = held_reservation(organization, owner, catalog)
    settlement.reservation_settle(reservation_id=reservation.pk)
    return Invoice.objects.get()


def test_finance_sends_again_an_invoice_that_failed_for_good(
    catalog, organization, owner, stripe_invoices, settings, finance_user,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    from core.errors import NotAllowed

    invoice = invoice_failed_for_good(catalog, organization, owner, stripe_invoices, settings)
    assert (invoice.attempts, FinanceFlag.objects.get().kind) == (1, "invoice_not_sent")
    with pytest.raises(NotAllowed):
        invoices.invoice_retry(invoice=invoice, actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        invoices.invoice_retry(invoice=invoice, actor=finance_user)
    invoice.refresh_from_db()
    assert (invoice.stripe_invoice_id, invoice.attempts, invoice.amount) == (
        "in_test_1", 0, Decimal("768.00"),
    )  # fmt: skip
    assert selectors.balance_for_org(organization) == Decimal("768.00")
    retried = AuditEvent.objects.get(action="invoice.retried")
    assert (retried.actor, retried.data["attempts_before"]) == (finance_user, 1)
    with pytest.raises(Conflict, match="nothing to send again"):
        invoices.invoice_retry(invoice=invoice, actor=finance_user)


def test_the_invoice_admin_confirms_then_sends_again(
    catalog, organization, owner, stripe_invoices, settings, finance_user,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    from django.urls import reverse

    from tests.backoffice.conftest import verified_client

    invoice = invoice_failed_for_good(catalog, organization, owner, stripe_invoices, settings)
    admin = verified_client(finance_user)
    url = reverse("admin:billing_invoice_changelist")
    chosen = {"action": "send_again", "_selected_action": [invoice.pk]}
    page = admin.post(url, chosen)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Send invoices again" in text
    assert "The payment could not be processed." in text
    assert Invoice.objects.get().attempts == 1  # nothing happens before the confirmation
    with django_capture_on_commit_callbacks(execute=True):
        done = admin.post(url, {**chosen, "confirm": "yes"}, follow=True)
    assert f"Sending again 1: {invoice}." in done.content.decode()
    invoice.refresh_from_db()
    assert (invoice.stripe_invoice_id, invoice.attempts) == ("in_test_1", 0)


def test_an_outage_keeps_the_idempotency_key_of_the_invoice(
    catalog, organization, owner, stripe_invoices, settings
):
    """Stripe may have made the invoice before the answer was lost: only the same key is safe."""
    settings.STRIPE_MAX_NETWORK_RETRIES = 0  # one call per try, no back-off sleeps
    on_invoice_terms(organization)
    stripe_invoices.fail = [500]
    reservation = held_reservation(organization, owner, catalog)
    settlement.reservation_settle(reservation_id=reservation.pk)
    invoice = Invoice.objects.get()
    assert (invoice.attempts, invoice.key_version, invoice.stripe_invoice_id) == (1, 0, None)
    stripe_invoices.fail = []
    settlement.reservation_settle(reservation_id=reservation.pk)
    keys = {c[1] for c in stripe_invoices.calls if c[0] == "create"}
    assert keys == {f"invoice:{reservation.public_id}:invoice"}
    invoice.refresh_from_db()
    assert (invoice.stripe_invoice_id, invoice.amount) == ("in_test_1", Decimal("768.00"))


def test_an_invoice_voided_at_stripe_follows_once(catalog, organization, owner, stripe_invoices):
    invoice = sent_block(catalog, organization, owner)
    stripe_invoices.invoices["in_test_1"]["status"] = "void"
    for n in range(2):
        stored = WebhookEvent.objects.create(
            stripe_event_id=f"evt_void_{n}", type="invoice.voided", object_id="in_test_1",
            payload={},
        )  # fmt: skip
        assert webhooks.webhook_process(stored.pk) == "processed"
    invoice.refresh_from_db()
    assert invoice.status == "void"
    assert AuditEvent.objects.filter(action="invoice.void").count() == 1


def disputed_then_closed(catalog, organization, owner, stripe_api, status: str) -> Payment:
    """Paid 768.00 for a block 8 days out; a dispute opened on it, then closed as `status`."""
    payment = payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog, start=days_out(8)),
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="d",
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(stripe_api)
        url = f"{stripe_api}/v1/disputes/dp_test_2"
        mock.add(responses.GET, url, json=dispute(payment, "needs_response"))
        disputes.dispute_record(dispute_id="dp_test_2")
        payment.refresh_from_db()
        assert payment.flagged is True
        # While it is open the bank may take the money back: nothing of it is refunded.
        assert capacity_services.cancellation_quote(payment.reservation).amount == Decimal("0.00")
        assert sla.sla_credit_cap(payment.reservation) == (Decimal("0.00"), None)
        mock.replace(responses.GET, url, json=dispute(payment, status))
        for n in range(2):
            stored = WebhookEvent.objects.create(
                stripe_event_id=f"evt_closed_{n}", type="charge.dispute.closed",
                object_id="dp_test_2", payload={},
            )  # fmt: skip
            assert webhooks.webhook_process(stored.pk) == "processed"
    payment.refresh_from_db()
    return payment


@pytest.mark.parametrize("status", ["won", "warning_closed"])
def test_a_won_dispute_clears_the_flag_and_a_cancellation_refunds_the_policy_share(
    catalog, organization, owner, stripe_api, status
):
    payment = disputed_then_closed(catalog, organization, owner, stripe_api, status)
    assert (payment.flagged, payment.flag_reason) == (False, "")
    note = (
        f"Closed by the system: dispute dp_test_2 was {status.replace('_', ' ')}; the payment "
        "stands and settlement treats it as paid again."
    )
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.resolved_by, flag.resolution) == ("dispute", None, note)
    assert flag.resolved_at is not None
    won = AuditEvent.objects.get(action="payment.dispute_won")  # once, for two deliveries
    assert (won.object_id, won.actor, won.data, won.reason) == (
        str(payment.pk), None, {"dispute": "dp_test_2", "status": status}, note,
    )  # fmt: skip
    resolved = AuditEvent.objects.get(action="finance_flag.resolved")
    assert (resolved.object_id, resolved.reason) == (str(flag.pk), note)
    reservation = payment.reservation
    assert selectors.settled_for_reservation(reservation) == Decimal("768.00")
    assert sla.sla_credit_cap(reservation) == (Decimal("768.00"), None)  # SLA credits may use it
    # Eight days out the policy gives everything back.
    assert capacity_services.cancellation_quote(reservation).amount == Decimal("768.00")
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    reservation.refresh_from_db()
    assert reservation.refund_due == Decimal("768.00")
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert list(Refund.objects.values_list("amount", "settles", "status")) == [
        (Decimal("768.00"), "cancellation", "succeeded")
    ]
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("768.00")
    assert tasks.settle_pending() == 0


def test_after_a_won_dispute_a_failed_block_is_refunded_in_full(
    catalog, organization, owner, stripe_api
):
    payment = disputed_then_closed(catalog, organization, owner, stripe_api, "won")
    Reservation.objects.filter(pk=payment.reservation_id).update(state=Reservation.State.FAILED)
    assert tasks.settle_pending() == 1  # the sweep sees the refund owed (eagerly settled here)
    assert list(Refund.objects.values_list("amount", "settles", "status")) == [
        (Decimal("768.00"), "failure", "succeeded")
    ]
    assert tasks.settle_pending() == 0


def test_a_won_dispute_leaves_a_flag_raised_for_something_else(
    catalog, organization, owner, stripe_api
):
    """Flagged for an amount that did not match before the dispute: that is still finance's."""
    payment = payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog, start=days_out(8)),
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="d",
    )
    Payment.objects.filter(pk=payment.pk).update(flagged=True, flag_reason="Stripe took $1.00.")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(stripe_api)
        url = f"{stripe_api}/v1/disputes/dp_test_2"
        mock.add(responses.GET, url, json=dispute(payment, "needs_response"))
        disputes.dispute_record(dispute_id="dp_test_2")
        mock.replace(responses.GET, url, json=dispute(payment, "won"))
        disputes.dispute_close_record(dispute_id="dp_test_2")
    payment.refresh_from_db()
    assert (payment.flagged, payment.flag_reason) == (True, "Stripe took $1.00.")
    assert AuditEvent.objects.filter(action="payment.dispute_won").count() == 0
    assert FinanceFlag.objects.get().resolved_at is not None  # the dispute itself is over
