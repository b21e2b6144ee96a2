"""What a canceled or failed reservation gets back, given once however often settlement runs:
a refund to the card (after any refund finance already made), or a credit on its invoice.

localstripe has no invoices or credit notes, so those calls are answered at the HTTP boundary,
shaped like Stripe's; everything else goes to the real localstripe."""

import json
import re
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qsl

import pytest
import responses
from django.core import mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization
from billing import selectors, tasks
from billing.models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund
from billing.services import extensions, invoices, refunds, settlement
from capacity import services as capacity_services
from capacity.models import Reservation
from core.models import AuditEvent

from .conftest import held_reservation
from .test_extensions import paid_block, save_card
from .test_invoices_and_disputes import invoice_json
from .test_payments import pay

S = Reservation.State
pytestmark = pytest.mark.usefixtures("stripe_api")


def ten_days_out() -> object:
    return timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=10)


def test_a_cancellation_refund_comes_after_a_goodwill_refund_and_only_once(
    catalog, organization, owner, stripe_api
):
    reservation = held_reservation(organization, owner, catalog, start=ten_days_out())
    payment = pay(reservation, owner, stripe_api)
    refunds.refund_issue(payment=payment, amount=Decimal("100.00"), reason="Goodwill", actor=owner)
    reservation.refresh_from_db()
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    for _ in range(3):
        settlement.reservation_settle(reservation_id=reservation.pk)
    payment.refresh_from_db()
    assert sorted(Refund.objects.values_list("amount", "settles", "status")) == [
        (Decimal("100.00"), "", "succeeded"),
        (Decimal("668.00"), "cancellation", "succeeded"),  # all that was left of 768.00
    ]
    assert payment.amount_refunded == Decimal("768.00")
    assert tasks.settle_pending() == 0  # nothing left for the sweep


def test_the_database_holds_one_settling_refund_per_payment(
    catalog, organization, owner, stripe_api
):
    payment = pay(held_reservation(organization, owner, catalog), owner, stripe_api)
    # A try Stripe failed leaves room for the next; one given up on (refused) does not.
    Refund.objects.create(
        payment=payment, amount=Decimal("1.00"), currency="usd", reason="w", settles="failure",
        status="failed",
    )  # fmt: skip
    Refund.objects.create(
        payment=payment, amount=Decimal("1.00"), currency="usd", reason="x", settles="failure"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Refund.objects.create(
            payment=payment, amount=Decimal("1.00"), currency="usd", reason="y", settles="failure"
        )
    with pytest.raises(refunds.AlreadySettled):
        refunds.refund_open(
            payment=payment, amount=Decimal("1.00"), reason="z", actor=None, settles="failure"
        )
    refused = {"currency": "usd", "reason": "v", "settles": "cancellation", "status": "failed"}
    Refund.objects.create(payment=payment, amount=Decimal("1.00"), refused=True, **refused)
    with pytest.raises(IntegrityError), transaction.atomic():
        Refund.objects.create(
            payment=payment, amount=Decimal("1.00"), **refused | {"refused": True}
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        Refund.objects.create(
            payment=payment, amount=Decimal("1.00"), **refused | {"status": "pending"}
        )
    assert Refund.objects.filter(payment=payment).count() == 3


@pytest.fixture
def stripe_invoice(stripe_api):
    """One Stripe invoice (in_test_1) with void and credit notes; its state is a dict."""
    state = {"status": "open", "amount": 0, "paid": None, "calls": []}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(stripe_api)
        base = re.escape(stripe_api)

        def answer(request=None):
            body = invoice_json("in_test_1", state["status"], "cus_1", state["amount"])
            if state["paid"] is not None:
                body["amount_paid"] = state["paid"]
            return 200, {}, json.dumps(body)

        def create(request):
            state["calls"].append(("create", request.headers.get("Idempotency-Key"), {}))
            return answer()

        def item(request):
            state["amount"] = int(dict(parse_qsl(request.body))["amount"])
            return 200, {}, json.dumps({"id": "ii_1", "object": "invoiceitem"})

        def void(request):
            state["status"] = "void"
            state["calls"].append(("void", request.headers.get("Idempotency-Key"), {}))
            return answer()

        def credit_note(request):
            body = dict(parse_qsl(request.body))
            state["calls"].append(("credit_note", request.headers.get("Idempotency-Key"), body))
            return 200, {}, json.dumps({"id": "cn_1", "object": "credit_note", **body})

        mock.add_callback(responses.POST, re.compile(base + r"/v1/invoices$"), callback=create)
        mock.add_callback(responses.POST, re.compile(base + r"/v1/invoiceitems$"), callback=item)
        for step in ("finalize", "send"):
            mock.add_callback(
                responses.POST, re.compile(base + rf"/v1/invoices/in_test_1/{step}$"), answer
            )
        mock.add_callback(
            responses.POST, re.compile(base + r"/v1/invoices/in_test_1/void$"), callback=void
        )
        mock.add_callback(responses.GET, re.compile(base + r"/v1/invoices/in_test_1$"), answer)
        mock.add_callback(
            responses.POST, re.compile(base + r"/v1/credit_notes$"), callback=credit_note
        )
        yield state


def invoiced(catalog, organization, owner) -> Reservation:
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", payment_days=30, credit_limit=Decimal("10000")
    )
    organization.refresh_from_db()
    reservation = held_reservation(organization, owner, catalog, start=ten_days_out())
    settlement.reservation_settle(reservation_id=reservation.pk)  # sends the invoice
    assert Invoice.objects.get(reservation=reservation).stripe_invoice_id == "in_test_1"
    assert selectors.balance_for_org(organization) == Decimal("768.00")
    return reservation


def credits(organization) -> list:
    return list(
        LedgerEntry.objects.filter(organization=organization, kind="credit").values_list(
            "amount", "invoice__status"
        )
    )


def test_canceling_an_invoiced_reservation_in_full_voids_its_open_invoice(
    catalog, organization, owner, stripe_invoice
):
    reservation = invoiced(catalog, organization, owner)
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert [c[0] for c in stripe_invoice["calls"]] == ["create", "void"]
    assert stripe_invoice["calls"][1][1] == "credit:in_test_1"  # one key per invoice
    assert credits(organization) == [(Decimal("-768.00"), "void")]
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    assert Refund.objects.count() == Payment.objects.count() == 0
    event = AuditEvent.objects.get(action="invoice.credited")
    assert event.data == {"amount": "768.00", "voided": True, "reservation": reservation.public_id}
    assert tasks.settle_pending() == 0


def test_a_partial_credit_is_a_credit_note_and_the_payment_books_what_was_paid(
    catalog, organization, owner, stripe_invoice, settings
):
    settings.CAPACITY_CANCELLATION_POLICY = [(timedelta(days=30), 100), (timedelta(0), 50)]
    reservation = invoiced(catalog, organization, owner)
    # The invoice's amount, half of it: what the credit note below gives.
    assert capacity_services.cancellation_quote(reservation).amount == Decimal("384.00")
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    settlement.reservation_settle(reservation_id=reservation.pk)
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert [
        (c[0], c[2].get("amount"), c[2].get("credit_amount")) for c in stripe_invoice["calls"]
    ] == [
        ("create", None, None),
        ("credit_note", "38400", None),
    ]
    assert credits(organization) == [(Decimal("-384.00"), "open")]
    # The customer pays what the invoice still asks for.
    stripe_invoice.update(status="paid", paid=38400)
    invoices.invoice_sync(stripe_invoice_id="in_test_1")
    invoices.invoice_sync(stripe_invoice_id="in_test_1")
    assert list(
        LedgerEntry.objects.filter(kind="invoice_payment").values_list("amount", flat=True)
    ) == [Decimal("-384.00")]
    assert selectors.balance_for_org(organization) == Decimal("0.00")


def test_a_failed_block_on_a_paid_invoice_is_credited_to_the_customers_balance(
    catalog, organization, owner, stripe_invoice
):
    reservation = invoiced(catalog, organization, owner)
    stripe_invoice.update(status="paid", paid=76800)
    invoices.invoice_sync(stripe_invoice_id="in_test_1")
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    Reservation.objects.filter(pk=reservation.pk).update(state=S.FAILED)
    assert tasks.settle_pending() == 1  # the sweep sees the credit owed
    settlement.reservation_settle(reservation_id=reservation.pk)
    note = stripe_invoice["calls"][-1]
    assert (note[0], note[2]["amount"], note[2]["credit_amount"]) == (
        "credit_note",
        "76800",
        "76800",
    )
    assert credits(organization) == [(Decimal("-768.00"), "paid")]
    assert selectors.balance_for_org(organization) == Decimal("-768.00")  # a credit for next time
    assert tasks.settle_pending() == 0


def test_a_block_paid_by_card_is_not_invoiced_after_a_move_to_invoice_terms(
    catalog, organization, owner, stripe_api
):
    """Paid by card, then sales moved the organization to invoice terms: the block is paid, so
    neither settling it nor the sweep invoices it a second time."""
    reservation = held_reservation(organization, owner, catalog, start=ten_days_out())
    pay(reservation, owner, stripe_api)
    Organization.objects.filter(pk=organization.pk).update(payment_terms="invoice")
    reservation.refresh_from_db()
    assert reservation.state == S.SCHEDULED
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert Invoice.objects.count() == 0
    assert tasks.settle_pending() == 0


# --- Refunds from the money settled, never the total ---------------------------------------------
def cancellation_refunds(reservation: Reservation) -> list[tuple]:
    """(payment, amount, status) of the refunds settling the cancellation, latest first."""
    return list(
        Refund.objects.filter(payment__reservation=reservation, settles="cancellation")
        .order_by("-payment__succeeded_at", "-payment_id")
        .values_list("payment__public_id", "amount", "status")
    )


def test_a_goodwill_refund_before_canceling_lowers_the_quote_and_the_refund_alike(
    catalog, organization, owner, stripe_api
):
    reservation = held_reservation(organization, owner, catalog)  # in an hour: 50 % back
    payment = pay(reservation, owner, stripe_api)
    refunds.refund_issue(payment=payment, amount=Decimal("100.01"), reason="Goodwill", actor=owner)
    reservation.refresh_from_db()
    quote = capacity_services.cancellation_quote(reservation)
    # Half of 667.99 is 333.995: 334.00 to the cent, not half of the 768.00 total.
    assert (quote.amount, quote.percent) == (Decimal("334.00"), 50)
    canceled = capacity_services.reservation_cancel(reservation=reservation, actor=owner)
    assert canceled.refund_due == quote.amount
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert cancellation_refunds(reservation) == [
        (payment.public_id, Decimal("334.00"), "succeeded")
    ]
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("434.01")
    assert tasks.settle_pending() == 0


def test_after_a_paid_extension_the_latest_payment_is_refunded_first(
    catalog, organization, owner, stripe_api
):
    reservation = paid_block(organization, owner, catalog, stripe_api)  # 768.00
    save_card(organization, owner, stripe_api)
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=4, attempt_token="more"
    )  # 128.00 off-session
    block = reservation.payments.get(extension__isnull=True)
    extra = started.payment
    refunds.refund_issue(payment=extra, amount=Decimal("28.00"), reason="Goodwill", actor=owner)
    reservation.refresh_from_db()
    # Paid 768.00 + 128.00 - 28.00 = 868.00; half back inside the week.
    assert capacity_services.cancellation_quote(reservation).amount == Decimal("434.00")
    capacity_services.reservation_cancel(reservation=reservation, actor=owner)
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert cancellation_refunds(reservation) == [
        (extra.public_id, Decimal("100.00"), "succeeded"),  # all that was left of it
        (block.public_id, Decimal("334.00"), "succeeded"),
    ]
    assert tasks.settle_pending() == 0


def test_complimentary_hours_are_not_in_the_quote_or_the_refund(
    catalog, organization, owner, stripe_api
):
    from backoffice.roles import OPERATIONS
    from capacity import operations
    from tests.backoffice.conftest import make_staff

    reservation = paid_block(organization, owner, catalog, stripe_api)
    operations.reservation_extend(
        reservation=reservation, actor=make_staff(OPERATIONS), hours=4, reason="Outage"
    )
    reservation.refresh_from_db()
    assert reservation.duration_hours == 28
    assert capacity_services.cancellation_quote(reservation).amount == Decimal("384.00")
    capacity_services.reservation_cancel(reservation=reservation, actor=owner)
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert [r[1:] for r in cancellation_refunds(reservation)] == [(Decimal("384.00"), "succeeded")]


def test_a_failed_block_gives_back_everything_settled_on_every_payment(
    catalog, organization, owner, stripe_api
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    save_card(organization, owner, stripe_api)
    extensions.extension_start(reservation=reservation, actor=owner, hours=2, attempt_token="x")
    block = reservation.payments.get(extension__isnull=True)
    refunds.refund_issue(payment=block, amount=Decimal("50.00"), reason="Goodwill", actor=owner)
    settled = selectors.settled_for_reservation(reservation)
    assert settled == Decimal("782.00")  # 768.00 + 64.00 - 50.00
    Reservation.objects.filter(pk=reservation.pk).update(state=S.FAILED)
    assert tasks.settle_pending() == 1  # the sweep sees it and (eagerly here) settles it
    failure = Refund.objects.filter(settles="failure")
    assert sorted(failure.values_list("amount", flat=True)) == [Decimal("64.00"), Decimal("718.00")]
    assert sum(failure.values_list("amount", flat=True)) == settled
    assert selectors.settled_for_reservation(reservation) == Decimal("0.00")
    assert tasks.settle_pending() == 0


def test_the_sweep_finishes_a_cancellation_refund_cut_short_between_payments(
    catalog, organization, owner, stripe_api, monkeypatch
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    save_card(organization, owner, stripe_api)
    extensions.extension_start(reservation=reservation, actor=owner, hours=4, attempt_token="x")
    reservation.refresh_from_db()
    capacity_services.reservation_cancel(reservation=reservation, actor=owner)  # 448.00 due
    issue, calls = settlement.refund_open, []

    def dies_before_the_second(**kwargs):
        calls.append(kwargs["payment"].public_id)
        if len(calls) == 2:
            raise RuntimeError("the worker was stopped")
        return issue(**kwargs)

    monkeypatch.setattr(settlement, "refund_open", dies_before_the_second)
    with pytest.raises(RuntimeError):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert [r[1:] for r in cancellation_refunds(reservation)] == [(Decimal("128.00"), "succeeded")]
    monkeypatch.setattr(settlement, "refund_open", issue)
    assert tasks.settle_pending() == 1  # one payment refunded is not the refund due
    assert [r[1:] for r in cancellation_refunds(reservation)] == [
        (Decimal("128.00"), "succeeded"),
        (Decimal("320.00"), "succeeded"),
    ]
    assert tasks.settle_pending() == 0


def test_a_block_paid_by_card_with_hours_on_an_invoice_gets_both_back(
    catalog, organization, owner, stripe_api, stripe_invoice
):
    """Paid by card, then 4 h more invoiced (after a move to invoice terms): the refund due goes
    to the card first, and what the card cannot take is credited on the invoice."""
    reservation = held_reservation(organization, owner, catalog, start=ten_days_out())
    payment = pay(reservation, owner, stripe_api)
    invoice = Invoice.objects.create(
        organization=organization, reservation=reservation, amount=Decimal("128.00"),
        currency="usd", stripe_invoice_id="in_test_1", status="open",
    )  # fmt: skip
    stripe_invoice["amount"] = 12800
    reservation.refresh_from_db()
    assert capacity_services.cancellation_quote(reservation).amount == Decimal("896.00")  # 100 %
    capacity_services.reservation_cancel(reservation=reservation, actor=owner)
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert cancellation_refunds(reservation) == [
        (payment.public_id, Decimal("768.00"), "succeeded")
    ]
    assert [c[0] for c in stripe_invoice["calls"]] == ["void"]
    # The ledger credits both: the card's refund, and the invoice.
    assert sorted(credits(organization)) == [
        (Decimal("-768.00"), None),
        (Decimal("-128.00"), "void"),
    ]
    invoice.refresh_from_db()
    assert invoice.status == "void"
    assert selectors.settled_for_reservation(reservation) == Decimal("0.00")
    assert tasks.settle_pending() == 0


# --- A settling refund Stripe fails is not given: tried again, or flagged to finance once -----
@pytest.fixture
def stripe_refunds(stripe_api):
    """POST /v1/refunds answered like Stripe when it fails a refund (status failed, with a
    failure_reason) or refuses one (an error). `state["accept"]()` lets the real localstripe
    make the next ones; every other call goes to localstripe throughout."""
    state: dict = {"answer": ("failed", "declined"), "tries": []}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(stripe_api)

        def create(request):
            body = dict(parse_qsl(request.body))
            state["tries"].append((body["amount"], request.headers.get("Idempotency-Key")))
            kind, code = state["answer"]
            if kind == "error":
                error = {"type": "invalid_request_error", "code": code, "message": "No way."}
                return 400, {}, json.dumps({"error": error})
            refund = {
                "id": f"re_failed_{len(state['tries'])}", "object": "refund",
                "amount": int(body["amount"]), "currency": "usd", "status": "failed",
                "failure_reason": code, "payment_intent": body["payment_intent"],
                "metadata": {},
            }  # fmt: skip
            return 200, {}, json.dumps(refund)

        fake = mock.add_callback(
            responses.POST, re.compile(re.escape(stripe_api) + r"/v1/refunds$"), callback=create
        )
        state["accept"] = lambda: mock.remove(fake)
        yield state


def canceled_in_the_half_window(organization, owner, catalog, stripe_api) -> tuple:
    reservation = held_reservation(organization, owner, catalog)  # in an hour: 50 % back
    payment = pay(reservation, owner, stripe_api)
    reservation.refresh_from_db()
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    reservation.refresh_from_db()
    assert reservation.refund_due == Decimal("384.00")
    return reservation, payment


def refund_rows(reservation: Reservation) -> list[tuple]:
    return list(
        Refund.objects.filter(payment__reservation=reservation)
        .order_by("created_at", "id")
        .values_list("amount", "settles", "status", "failure_code", "refused")
    )


def money_rows(organization) -> list[tuple]:
    return sorted(
        LedgerEntry.objects.filter(organization=organization).values_list("kind", "amount")
    )


PAID_ONLY = [("charge", Decimal("768.00")), ("payment", Decimal("-768.00"))]


def test_a_failed_cancellation_refund_is_not_given_and_is_tried_again_until_it_goes(
    catalog, organization, owner, stripe_api, stripe_refunds, settings,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    settings.SETTLEMENT_REFUND_ATTEMPTS = 3
    reservation, payment = canceled_in_the_half_window(organization, owner, catalog, stripe_api)
    settlement.reservation_settle(reservation_id=reservation.pk)
    settlement.reservation_settle(reservation_id=reservation.pk)  # one try per run of the sweep
    assert refund_rows(reservation) == [
        (Decimal("384.00"), "cancellation", "failed", "declined", False),
        (Decimal("384.00"), "cancellation", "failed", "declined", False),
    ]
    # Nothing moved, so nothing is booked and the money is still the reservation's.
    assert money_rows(organization) == PAID_ONLY
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("0.00")
    assert selectors.settled_for_reservation(reservation) == Decimal("768.00")
    assert selectors.reservations_owed_card_refunds() == {reservation.pk}
    assert FinanceFlag.objects.count() == 0
    stripe_refunds["accept"]()  # Stripe takes the third try
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.settle_pending() == 1
    assert refund_rows(reservation)[-1] == (
        Decimal("384.00"), "cancellation", "succeeded", "", False
    )  # fmt: skip
    # Each try is a refund of its own, so Stripe's idempotency cannot replay the failure.
    made = Refund.objects.order_by("created_at", "id").values_list("public_id", flat=True)
    keys = [f"refund:{public_id}" for public_id in made]
    assert [key for _, key in stripe_refunds["tries"]] == keys[:2]
    assert [m.subject for m in mail.outbox] == [
        f"Refund of 384.00 USD for {reservation.public_id}"
    ]  # only for the refund that went
    assert money_rows(organization) == sorted(
        [*PAID_ONLY, ("credit", Decimal("-384.00")), ("refund", Decimal("384.00"))]
    )
    assert selectors.settled_for_reservation(reservation) == Decimal("384.00")
    for _ in range(2):
        assert tasks.settle_pending() == 0
    assert Refund.objects.count() == 3
    assert FinanceFlag.objects.count() == 0


def test_after_the_last_try_finance_is_flagged_once_and_the_sweep_lets_it_be(
    catalog, organization, owner, stripe_api, stripe_refunds, settings
):
    settings.SETTLEMENT_REFUND_ATTEMPTS = 2
    reservation, payment = canceled_in_the_half_window(organization, owner, catalog, stripe_api)
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert FinanceFlag.objects.count() == 0
    assert tasks.settle_pending() == 1  # the second and last try
    assert refund_rows(reservation) == [
        (Decimal("384.00"), "cancellation", "failed", "declined", False),
        (Decimal("384.00"), "cancellation", "failed", "declined", True),
    ]
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.stripe_object_id, flag.payment, flag.organization) == (
        "reconciliation",
        f"refund:{payment.stripe_payment_intent_id}:cancellation",
        payment,
        organization,
    )
    assert flag.detail == (
        f"Stripe refused the cancellation refund of $384.00 for {reservation.public_id} "
        f"(payment {payment.public_id}) after 2 tries: Stripe failed the refund (declined). "
        "The customer has not got these $384.00 back and settlement will not try again."
    )
    for _ in range(2):
        assert tasks.settle_pending() == 0
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert len(stripe_refunds["tries"]) == 2
    assert Refund.objects.count() == 2
    assert FinanceFlag.objects.count() == 1
    assert money_rows(organization) == PAID_ONLY  # no money moved, none booked
    assert selectors.settled_for_reservation(reservation) == Decimal("768.00")
    assert (
        list(AuditEvent.objects.filter(action="refund.failed").values_list("data", flat=True))
        == [{"payment": payment.public_id, "message": "Stripe failed the refund (declined)."}] * 2
    )


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            ("failed", "expired_or_canceled_card"),
            "Stripe failed the refund (expired_or_canceled_card).",
        ),
        (("error", "charge_disputed"), "The payment could not be processed."),
    ],
)  # fmt: skip
def test_a_refund_stripe_refuses_for_good_is_flagged_at_once(
    catalog, organization, owner, stripe_api, stripe_refunds, settings, answer, message
):
    settings.SETTLEMENT_REFUND_ATTEMPTS = 3
    stripe_refunds["answer"] = answer
    reservation, payment = canceled_in_the_half_window(organization, owner, catalog, stripe_api)
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert refund_rows(reservation) == [
        (Decimal("384.00"), "cancellation", "failed", answer[1], True)
    ]
    assert FinanceFlag.objects.get().detail == (
        f"Stripe refused the cancellation refund of $384.00 for {reservation.public_id} "
        f"(payment {payment.public_id}) after 1 try: {message} "
        "The customer has not got these $384.00 back and settlement will not try again."
    )
    for _ in range(2):
        assert tasks.settle_pending() == 0
    assert (len(stripe_refunds["tries"]), Refund.objects.count()) == (1, 1)
    assert money_rows(organization) == PAID_ONLY


def test_a_failed_block_refused_on_one_card_still_gets_the_other_back(
    catalog, organization, owner, stripe_api, settings
):
    """Two payments (the block, then an extension); Stripe refuses the extension's refund for
    good: the block's refund still goes, and the 64.00 not given back is the one flag."""
    settings.SETTLEMENT_REFUND_ATTEMPTS = 3
    reservation = paid_block(organization, owner, catalog, stripe_api)
    save_card(organization, owner, stripe_api)
    extensions.extension_start(reservation=reservation, actor=owner, hours=2, attempt_token="x")
    block = reservation.payments.get(extension__isnull=True)
    extra = reservation.payments.get(extension__isnull=False)
    Reservation.objects.filter(pk=reservation.pk).update(state=S.FAILED)
    refused = {"type": "card_error", "code": "expired_card", "message": "The card has expired."}
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_passthru(stripe_api)  # the block's refund is made at localstripe
        mock.add(
            responses.POST,
            f"{stripe_api}/v1/refunds",
            status=402,
            json={"error": refused},
            match=[lambda request: (extra.stripe_payment_intent_id in request.body, "")],
        )
        for _ in range(3):
            tasks.settle_pending()
    assert sorted(
        Refund.objects.values_list("payment", "amount", "status", "failure_code", "refused")
    ) == [
        (block.pk, Decimal("768.00"), "succeeded", "", False),
        (extra.pk, Decimal("64.00"), "failed", "expired_card", True),
    ]
    assert FinanceFlag.objects.get().detail == (
        f"Stripe refused the failure refund of $64.00 for {reservation.public_id} "
        f"(payment {extra.public_id}) after 1 try: The card has expired. "
        "The customer has not got these $64.00 back and settlement will not try again."
    )
    assert money_rows(organization) == sorted(
        [
            *PAID_ONLY,
            ("charge", Decimal("64.00")),
            ("payment", Decimal("-64.00")),
            ("credit", Decimal("-768.00")),
            ("refund", Decimal("768.00")),
        ]
    )
    assert selectors.settled_for_reservation(reservation) == Decimal("64.00")
    assert tasks.settle_pending() == 0


def test_a_staff_refund_stuck_pending_that_stripe_refuses_is_marked_failed_and_flagged(
    catalog, organization, owner, stripe_api, stripe_refunds
):
    """Before, the sweep sent it again every five minutes forever, and nobody heard of it."""
    stripe_refunds["answer"] = ("error", "charge_disputed")
    reservation = held_reservation(organization, owner, catalog)
    payment = pay(reservation, owner, stripe_api)
    refund = refunds.refund_open(
        payment=payment, amount=Decimal("10.00"), reason="Goodwill", actor=owner
    )  # written, never sent: Stripe was out of reach
    assert tasks.settle_pending() == 1
    refund.refresh_from_db()
    assert (refund.status, refund.failure_code) == ("failed", "charge_disputed")
    assert FinanceFlag.objects.get().detail == (
        f"Stripe refused refund {refund.public_id} of $10.00 for {reservation.public_id}: "
        "The payment could not be processed."
    )
    assert tasks.settle_pending() == 0
    assert money_rows(organization) == PAID_ONLY


# --- Invoices void or written off at Stripe take no credit (real localstripe) ---------------------
def invoiced_at_localstripe(catalog, organization, owner, *, extended: bool) -> Reservation:
    """Three days out on invoice terms (50 % back): the block's invoice (768.00) and, when
    `extended`, 2 h more on an invoice of their own (64.00), both sent at localstripe."""
    from .test_invoices_and_disputes import on_invoice_terms

    on_invoice_terms(organization)
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=3)
    reservation = held_reservation(organization, owner, catalog, start=start)
    settlement.reservation_settle(reservation_id=reservation.pk)
    if extended:
        started = extensions.extension_start(
            reservation=reservation, actor=owner, hours=2, attempt_token="more"
        )
        assert (started.extension.state, started.invoice.status) == ("paid", "open")
    reservation.refresh_from_db()
    return reservation


def stripe_id(reservation: Reservation, *, extension: bool) -> str:
    invoice = reservation.invoices.get(extension__isnull=not extension)
    return str(invoice.stripe_invoice_id)


def void_at_stripe(api: str, invoice_id: str) -> None:
    """Finance voids the invoice in Stripe's dashboard."""
    from .test_localstripe_invoices import at_stripe

    at_stripe(api, f"/v1/invoices/{invoice_id}/void").raise_for_status()


def notes_at_stripe(invoice_id: str) -> list[tuple[str, int]]:
    from billing import gateway

    return [(n.type, n.amount) for n in gateway.credit_notes_list(invoice_id=invoice_id)]


def booked_credits(organization) -> list[tuple]:
    return sorted(
        LedgerEntry.objects.filter(organization=organization, kind="credit").values_list(
            "invoice__stripe_invoice_id", "amount"
        )
    )


def test_an_extension_invoice_voided_at_stripe_takes_no_share_of_the_cancellation_credit(
    catalog, organization, owner, stripe_api
):
    reservation = invoiced_at_localstripe(catalog, organization, owner, extended=True)
    block, extra = stripe_id(reservation, extension=False), stripe_id(reservation, extension=True)
    void_at_stripe(stripe_api, extra)
    invoices.invoice_sync(stripe_invoice_id=extra)  # what invoice.voided's webhook does
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    reservation.refresh_from_db()
    assert reservation.refund_due == Decimal("384.00")  # half of the 768.00 still billed
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert (notes_at_stripe(block), notes_at_stripe(extra)) == ([("pre_payment", 38400)], [])
    assert booked_credits(organization) == [(block, Decimal("-384.00"))]
    assert FinanceFlag.objects.count() == 0
    assert tasks.settle_pending() == 0


def test_an_invoice_voided_at_stripe_before_we_heard_passes_its_share_to_the_next(
    catalog, organization, owner, stripe_api
):
    reservation = invoiced_at_localstripe(catalog, organization, owner, extended=True)
    block, extra = stripe_id(reservation, extension=False), stripe_id(reservation, extension=True)
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    reservation.refresh_from_db()
    assert reservation.refund_due == Decimal("416.00")  # half of 832.00, as quoted
    void_at_stripe(stripe_api, extra)  # its webhook not processed yet
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert (notes_at_stripe(block), notes_at_stripe(extra)) == ([("pre_payment", 41600)], [])
    assert booked_credits(organization) == [(block, Decimal("-416.00"))]
    assert reservation.invoices.get(extension__isnull=False).status == "void"  # follows Stripe
    assert FinanceFlag.objects.count() == 0
    assert tasks.settle_pending() == 0


@pytest.mark.parametrize("written_off", ["void", "mark_uncollectible"])
def test_a_credit_no_invoice_can_take_is_flagged_to_finance_once_and_not_booked(
    catalog, organization, owner, stripe_api, written_off
):
    from .test_localstripe_invoices import at_stripe

    reservation = invoiced_at_localstripe(catalog, organization, owner, extended=False)
    block = stripe_id(reservation, extension=False)
    capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="Plans")
    at_stripe(stripe_api, f"/v1/invoices/{block}/{written_off}").raise_for_status()
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert (notes_at_stripe(block), booked_credits(organization)) == ([], [])
    status = "void" if written_off == "void" else "uncollectible"
    assert reservation.invoices.get().status == status
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.stripe_object_id, flag.detail) == (
        "reconciliation",
        f"credit:{reservation.public_id}",
        f"$384.00 of the credit due for {reservation.public_id} (Cancellation refund per the "
        "policy.) was not given: none of its invoices is open or paid at Stripe to take it. "
        "Settle it with the customer (a credit on another invoice, a refund), then resolve "
        "this flag.",
    )
    assert tasks.settle_pending() == 0


def test_a_failed_block_credits_its_invoices_but_not_one_voided_at_stripe(
    catalog, organization, owner, stripe_api
):
    reservation = invoiced_at_localstripe(catalog, organization, owner, extended=True)
    block, extra = stripe_id(reservation, extension=False), stripe_id(reservation, extension=True)
    void_at_stripe(stripe_api, extra)
    Reservation.objects.filter(pk=reservation.pk).update(state=S.FAILED)
    for _ in range(2):
        settlement.reservation_settle(reservation_id=reservation.pk)
    from billing import gateway

    assert gateway.invoice_retrieve(block).status == "void"
    assert booked_credits(organization) == [(block, Decimal("-768.00"))]
    assert FinanceFlag.objects.count() == 0
    assert tasks.settle_pending() == 0


def test_money_leaving_a_payment_while_it_is_settled_stops_the_run_without_a_crash(
    catalog, organization, owner, stripe_api, monkeypatch, caplog
):
    """Settlement reads a payment's refundable money without its lock; when another refund
    takes it first, refund_open refuses under the lock: the run stops, nothing is lost, and the
    next run settles from what is there."""
    reservation, payment = canceled_in_the_half_window(organization, owner, catalog, stripe_api)
    opened = refunds.refund_open

    def goodwill_first(**kwargs):
        if kwargs.get("settles"):
            refunds.refund_issue(
                payment=payment, amount=Decimal("500.00"), reason="Goodwill", actor=owner
            )
        return opened(**kwargs)

    monkeypatch.setattr(settlement, "refund_open", goodwill_first)
    settlement.reservation_settle(reservation_id=reservation.pk)  # no exception
    assert refund_rows(reservation) == [(Decimal("500.00"), "", "succeeded", "", False)]
    assert "settling " + reservation.public_id in caplog.text
    monkeypatch.setattr(settlement, "refund_open", opened)
    settlement.reservation_settle(reservation_id=reservation.pk)
    assert refund_rows(reservation) == [
        (Decimal("500.00"), "", "succeeded", "", False),
        (Decimal("268.00"), "cancellation", "succeeded", "", False),  # all that was left
    ]
