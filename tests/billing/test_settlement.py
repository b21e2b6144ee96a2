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
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization
from billing import selectors, tasks
from billing.models import Invoice, LedgerEntry, Payment, Refund
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
    assert Refund.objects.filter(payment=payment).count() == 1


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
    issue, calls = settlement.refund_issue, []

    def dies_before_the_second(**kwargs):
        calls.append(kwargs["payment"].public_id)
        if len(calls) == 2:
            raise RuntimeError("the worker was stopped")
        return issue(**kwargs)

    monkeypatch.setattr(settlement, "refund_issue", dies_before_the_second)
    with pytest.raises(RuntimeError):
        settlement.reservation_settle(reservation_id=reservation.pk)
    assert [r[1:] for r in cancellation_refunds(reservation)] == [(Decimal("128.00"), "succeeded")]
    monkeypatch.setattr(settlement, "refund_issue", issue)
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
