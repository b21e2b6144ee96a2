"""check_books against a real localstripe: money moved behind our back is caught, once."""

import json
import re
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import requests
import responses
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import Organization
from billing import gateway, tasks
from billing.models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund
from billing.services import accounts, payments, refunds, settlement
from capacity import services as capacity_services
from capacity.models import Reservation
from core.money import format_money, to_minor
from portal.celery import app

from .conftest import SECRET_KEY, card, held_reservation, stripe_charges

pytestmark = pytest.mark.usefixtures("stripe_api")


def check_books(*args: str) -> tuple[int, str]:
    """Run the command as an operator would (everything checked: no grace period)."""
    out = StringIO()
    try:
        call_command("check_books", "--grace", "0", *args, stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def paid(organization, owner, catalog, api) -> Payment:
    return payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog),
        actor=owner,
        payment_method_id=card(api),
        attempt_token="books",
    )


def refund_at_stripe(api: str, payment: Payment, amount_minor: int) -> str:
    """A refund made in Stripe's dashboard: our code never hears of it (no webhook here)."""
    response = requests.post(
        f"{api}/v1/refunds",
        data={"payment_intent": payment.stripe_payment_intent_id, "amount": amount_minor},
        auth=(SECRET_KEY, ""),
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["id"]


def test_books_that_agree_exit_0_and_flag_nothing(catalog, organization, owner, stripe_api):
    payment = paid(organization, owner, catalog, stripe_api)
    refunds.refund_issue(payment=payment, amount=Decimal("50.00"), reason="Goodwill.", actor=None)
    code, out = check_books()
    assert code == 0
    assert out.splitlines() == [
        "check_books: the books agree with Stripe; checked 1 organization, 1 payment, "
        "1 refund, 0 invoices with Stripe and 1 reservation; 0 left for the next run "
        "(too recent); 0 new finance flags"
    ]
    assert FinanceFlag.objects.count() == 0


def test_a_refund_made_directly_at_stripe_is_caught(catalog, organization, owner, stripe_api):
    payment = paid(organization, owner, catalog, stripe_api)
    refund_id = refund_at_stripe(stripe_api, payment, 10000)
    intent = payment.stripe_payment_intent_id
    code, out = check_books()
    assert code == 1
    line = (
        f"{organization.slug}: refund {refund_id} of {intent}: refunded: ledger $0.00, "
        "Stripe $100.00 (refunded at Stripe; the ledger has no such refund)"
    )
    assert out.splitlines() == [
        line,
        "check_books: 1 difference; checked 1 organization, 1 payment, 1 refund, "
        "0 invoices with Stripe and 1 reservation; 0 left for the next run (too recent); "
        "1 new finance flag",
    ]
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.stripe_object_id, flag.organization, flag.detail) == (
        "reconciliation",
        f"books:{refund_id}",
        organization,
        f"check_books: {line}",
    )


def test_a_difference_is_flagged_once_however_often_the_check_runs(
    catalog, organization, owner, stripe_api, settings
):
    payment = paid(organization, owner, catalog, stripe_api)
    refund_at_stripe(stripe_api, payment, 2500)
    settings.BOOKS_CHECK_GRACE_SECONDS = 0
    assert tasks.check_books.apply().get() == 1  # the daily task
    first = check_books()
    second = check_books("--json")
    third = check_books("--quiet")
    assert (first[0], second[0], third[0]) == (1, 1, 1)
    report = json.loads(second[1])
    assert [
        (d["what"], d["ours_label"], d["ours"], d["theirs_label"], d["theirs"])
        for d in report["differences"]
    ] == [("refunded", "ledger", "0.00", "Stripe", "25.00")]
    assert (report["flags_raised"], first[1].splitlines()[-1][-19:]) == (0, "0 new finance flags")
    assert third[1].splitlines()[-1].endswith("0 new finance flags")
    assert FinanceFlag.objects.count() == 1


def test_money_stripe_took_that_the_ledger_lacks(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    payment = stripe_charges(reservation, card(stripe_api))  # paid; we never heard back
    code, out = check_books("--no-flags")
    price = format_money(reservation.total, "usd")
    assert code == 1
    assert out.splitlines()[0] == (
        f"{organization.slug}: payment {payment.stripe_payment_intent_id}: paid: ledger $0.00, "
        f"Stripe {price} (Stripe took it; the ledger has no payment)"
    )
    assert FinanceFlag.objects.count() == 0


def test_a_block_confirmed_beyond_what_was_charged(catalog, organization, owner, stripe_api):
    """The extension-for-free shape: the block's price grew, the money did not."""
    payment = paid(organization, owner, catalog, stripe_api)
    reservation = payment.reservation
    charged = reservation.total
    Reservation.objects.filter(pk=reservation.pk).update(total=charged + Decimal("382.40"))
    code, out = check_books()
    assert code == 1
    assert out.splitlines()[0] == (
        f"{organization.slug}: reservation {reservation.public_id} (scheduled): sold: "
        f"charged {format_money(charged, 'usd')}, "
        f"its price {format_money(charged + Decimal('382.40'), 'usd')}"
    )


def test_invoice_terms_say_what_was_not_checked(catalog, organization, owner, stripe_api):
    """A Stripe without invoices or credit notes (its credit notes route is a bare 404): an
    invoice sent is not compared, and the output says so; its charge in the ledger and the card
    side still are."""
    paid(organization, owner, catalog, stripe_api)  # paid by card before the terms changed
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", credit_limit=Decimal("100000")
    )
    organization.refresh_from_db()
    reservation = held_reservation(organization, owner, catalog, start=None, length=2)
    invoice = Invoice.objects.create(
        organization=organization,
        reservation=reservation,
        stripe_invoice_id="in_sent_elsewhere",
        amount=reservation.total,
        currency="usd",
        status="open",
    )
    LedgerEntry.objects.create(
        organization=organization,
        kind=LedgerEntry.Kind.CHARGE,
        amount=invoice.amount,
        currency="usd",
        reservation=reservation,
        invoice=invoice,
        description="Invoice in_sent_elsewhere",
    )
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_passthru(stripe_api)
        mock.add(
            responses.GET,
            re.compile(re.escape(stripe_api) + r"/v1/credit_notes\?limit=1$"),
            status=404,
            body="404: Not Found",
            content_type="text/plain",
        )
        code, out = check_books()
    assert code == 0
    assert out.splitlines()[0] == (
        f"not checked: {organization.slug}: 1 invoice ({format_money(invoice.amount, 'usd')}) "
        "not compared with Stripe (totals, payments, credit notes): this Stripe offers no "
        "invoices or credit notes API. Checked: its card payments and refunds, "
        "each invoice's charge in the ledger, and each reservation's ledger."
    )
    assert "checked 1 organization, 1 payment, 0 refunds, 0 invoices" in out


def test_money_that_just_moved_is_left_for_the_next_run(catalog, organization, owner, stripe_api):
    payment = paid(organization, owner, catalog, stripe_api)
    refund_at_stripe(stripe_api, payment, 10000)
    out = StringIO()
    call_command("check_books", stdout=out)  # the default grace period: nothing is final yet
    assert "the books agree with Stripe" in out.getvalue()
    assert "2 left for the next run (too recent)" in out.getvalue()
    assert FinanceFlag.objects.count() == 0


def test_the_check_runs_daily_on_the_billing_queue():
    entry = django_settings.CELERY_BEAT_SCHEDULE["billing.check_books"]
    assert (entry["task"], entry["schedule"].hour, entry["schedule"].minute) == (
        "billing.check_books",
        {3},
        {47},
    )
    assert app.amqp.router.route({}, "billing.check_books")["queue"].name == "billing"


def sent_invoice(organization, owner, catalog) -> tuple[Invoice, dict]:
    """An invoice-terms block invoiced in Stripe: our row and its charge, and Stripe's JSON."""
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", credit_limit=Decimal("100000")
    )
    organization.refresh_from_db()
    reservation = held_reservation(organization, owner, catalog, length=2)
    invoice = Invoice.objects.create(
        organization=organization,
        reservation=reservation,
        stripe_invoice_id="in_books_1",
        amount=reservation.total,
        currency="usd",
        status="open",
    )
    LedgerEntry.objects.create(
        organization=organization,
        kind=LedgerEntry.Kind.CHARGE,
        amount=invoice.amount,
        currency="usd",
        reservation=reservation,
        invoice=invoice,
        description="Invoice in_books_1",
    )
    total = to_minor(invoice.amount, "usd")
    customer = accounts.billing_account_ensure(organization).stripe_customer_id
    return invoice, {
        "id": "in_books_1",
        "object": "invoice",
        "customer": customer,
        "status": "open",
        "total": total,
        "amount_due": total,
        "amount_paid": 0,
        "currency": "usd",
        "created": 1767225600,
    }


def page(*items: dict) -> str:
    return json.dumps({"object": "list", "data": list(items), "has_more": False})


def check_books_with_invoicing(
    api: str, stripe_invoice: dict, notes: list[dict], paid_by: list[dict] | None = None
) -> tuple[int, str]:
    """check_books where Stripe has invoices: those endpoints are faked at the HTTP boundary
    (localstripe has none), shaped like Stripe's; the rest goes to localstripe."""
    base = re.escape(api)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_passthru(api)
        mock.add(responses.GET, re.compile(base + r"/v1/credit_notes\?limit=1$"), body=page())
        mock.add(responses.GET, re.compile(base + r"/v1/invoices\?.*"), body=page(stripe_invoice))
        mock.add(
            responses.GET,
            re.compile(base + r"/v1/credit_notes\?.*invoice=in_books_1.*"),
            body=page(*notes),
        )
        if paid_by is not None:
            mock.add(
                responses.GET,
                re.compile(base + r"/v1/invoice_payments\?.*invoice=in_books_1.*"),
                body=page(*paid_by),
            )
        return check_books()


def test_an_invoice_credited_at_stripe_behind_our_back(catalog, organization, owner, stripe_api):
    _invoice, stripe_invoice = sent_invoice(organization, owner, catalog)
    note = {
        "id": "cn_1",
        "object": "credit_note",
        "amount": 2500,
        "currency": "usd",
        "status": "issued",
    }
    code, out = check_books_with_invoicing(stripe_api, stripe_invoice, [note])
    assert code == 1
    assert out.splitlines()[0] == (
        f"{organization.slug}: invoice in_books_1: credited: ledger $0.00, Stripe $25.00"
    )
    assert "1 invoice with Stripe" in out.splitlines()[-1]


def test_an_invoice_paid_by_card_is_the_invoices_not_a_stray_payment(
    catalog, organization, owner, stripe_api
):
    """Stripe's charges no longer name the invoice they paid: its invoice payments do."""
    invoice, stripe_invoice = sent_invoice(organization, owner, catalog)
    intent = gateway.payment_intent_create(
        amount_minor=stripe_invoice["total"],
        currency="usd",
        customer_id=stripe_invoice["customer"],
        metadata={"invoice": "in_books_1"},
        idempotency_key="invoice-paid-by-card",
        payment_method_id=card(stripe_api),
    )
    stripe_invoice.update(status="paid", amount_paid=stripe_invoice["total"])
    LedgerEntry.objects.create(
        organization=organization,
        kind=LedgerEntry.Kind.INVOICE_PAYMENT,
        amount=-invoice.amount,
        currency="usd",
        reservation=invoice.reservation,
        invoice=invoice,
        description="Payment of invoice in_books_1",
    )
    paid_by = {"object": "invoice_payment", "payment": {"payment_intent": intent.id}}
    code, out = check_books_with_invoicing(stripe_api, stripe_invoice, [], [paid_by])
    assert (code, out.splitlines()[-1]) == (
        0,
        "check_books: the books agree with Stripe; checked 1 organization, 0 payments, "
        "0 refunds, 1 invoice with Stripe and 1 reservation; 0 left for the next run "
        "(too recent); 0 new finance flags",
    )


def test_the_usual_money_flows_leave_nothing_to_report(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    """A cancellation refunded per the policy, a reservation paid twice (one refunded) and a
    payment for a block canceled meanwhile (refunded in full): the books agree."""
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=10)
    canceled = paid(organization, owner, catalog, stripe_api).reservation
    canceled.refresh_from_db()
    capacity_services.reservation_cancel(reservation=canceled, actor=owner, reason="Plans")
    settlement.reservation_settle(reservation_id=canceled.pk)
    twice = held_reservation(organization, owner, catalog, start=start)
    first = stripe_charges(twice, card(stripe_api), attempt="first")
    second = stripe_charges(twice, card(stripe_api), attempt="second")
    payments.payment_sync(payment_intent_id=first.stripe_payment_intent_id)
    payments.payment_sync(payment_intent_id=second.stripe_payment_intent_id)
    late = held_reservation(organization, owner, catalog, start=start + timedelta(days=2))
    capacity_services.reservation_cancel(reservation=late, actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        payment = stripe_charges(late, card(stripe_api), attempt="late")
        payments.payment_sync(payment_intent_id=payment.stripe_payment_intent_id)
    assert Refund.objects.filter(status="succeeded").count() == 3
    code, out = check_books()
    assert (code, out.splitlines()[-1]) == (
        0,
        "check_books: the books agree with Stripe; checked 1 organization, 4 payments, "
        "3 refunds, 0 invoices with Stripe and 3 reservations; 0 left for the next run "
        "(too recent); 0 new finance flags",
    )


def test_stripe_out_of_reach_concludes_nothing(catalog, organization, owner, stripe_api, settings):
    paid(organization, owner, catalog, stripe_api)
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    code, out = check_books()
    assert (code, out) == (2, "")
    assert FinanceFlag.objects.count() == 0
