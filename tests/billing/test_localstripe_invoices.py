"""Invoices, invoice items, credit notes and invoice payments at the real localstripe (our
wrapper, billing/localstripe_server.py), through the gateway the app uses: shaped like Stripe,
stateful, idempotent, announced by signed webhooks, and read back by check_books."""

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from io import StringIO
from pathlib import Path

import pytest
import requests
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import Organization
from billing import gateway, selectors
from billing.models import FinanceFlag, Invoice, LedgerEntry, WebhookEvent, WebhookProcessing
from billing.services import accounts, invoices, payments, settlement
from capacity import services as capacity_services
from capacity.models import Reservation

from .conftest import DECLINED, ROOT, SECRET_KEY, WEBHOOK_SECRET, _free_port, card, held_reservation

DAY = 24 * 3600


def customer_of(organization: Organization) -> str:
    return accounts.billing_account_ensure(organization).stripe_customer_id


def issue(customer: str, amount: int = 76800, key: str = "invoice:rsv_1") -> object:
    """What invoice_issue does: create, one item, finalize, send (net 30)."""
    return gateway.invoice_create(
        customer_id=customer,
        amount_minor=amount,
        currency="usd",
        description="Hyperblock reservation rsv_1",
        days_until_due=30,
        metadata={"reservation": "rsv_1"},
        idempotency_key=key,
    )


def at_stripe(api: str, path: str, **data: object) -> requests.Response:
    """A call the app never makes (paying, marking uncollectible): the customer or the
    dashboard at Stripe."""
    return requests.post(f"{api}{path}", data=data, auth=(SECRET_KEY, ""), timeout=10)


def saved_card(api: str, customer: str, number: str = "4242424242424242") -> str:
    method = card(api, number)
    gateway.payment_method_attach(
        payment_method_id=method, customer_id=customer, idempotency_key=f"attach:{method}"
    )
    return method


def test_create_item_finalize_send_gives_an_open_invoice_for_the_amount(organization, stripe_api):
    customer = customer_of(organization)
    invoice = issue(customer)
    again = gateway.invoice_retrieve(invoice.id)
    finalized_at = invoice.status_transitions.finalized_at
    assert invoice.id.startswith("in_")
    assert (again.status, again.amount_due, again.amount_paid, again.amount_remaining) == (
        "open",
        76800,
        0,
        76800,
    )
    assert (again.total, again.currency, again.customer, again.collection_method) == (
        76800,
        "usd",
        customer,
        "send_invoice",
    )
    assert (again.due_date, again.auto_advance) == (finalized_at + 30 * DAY, False)
    assert again.number.endswith("-0001")
    assert again.hosted_invoice_url == f"{stripe_api}/i/{invoice.id}"
    assert gateway.as_dict(again.metadata) == {"reservation": "rsv_1"}
    [line] = again.lines.data
    assert (line.amount, line.currency, line.description) == (
        76800,
        "usd",
        "Hyperblock reservation rsv_1",
    )
    assert (again.pre_payment_credit_notes_amount, again.post_payment_credit_notes_amount) == (0, 0)
    # The hosted page is the customer's, reached without an API key.
    page = requests.get(again.hosted_invoice_url, timeout=10)
    assert (page.status_code, "still due 768.00 USD" in page.text) == (200, True)


def test_the_hosted_page_pays_with_the_card_on_file(organization, stripe_api):
    """What make run's customer opens from the invoice e-mail (no API key, as at Stripe)."""
    customer = customer_of(organization)
    invoice = issue(customer)
    saved_card(stripe_api, customer)
    answer = requests.post(
        f"{invoice.hosted_invoice_url}/pay", data={"how": "card"}, timeout=10,
        allow_redirects=False,
    )  # fmt: skip
    assert (answer.status_code, answer.headers["Location"]) == (303, f"/i/{invoice.id}")
    again = gateway.invoice_retrieve(invoice.id)
    assert (again.status, again.amount_paid) == ("paid", 76800)
    assert len(gateway.invoice_payments_list(invoice_id=invoice.id)) == 1
    page = requests.get(invoice.hosted_invoice_url, timeout=10).text
    assert ("Status: paid" in page, "<button" in page) == (True, False)


def test_the_same_idempotency_key_is_the_same_invoice(organization, stripe_api):
    customer = customer_of(organization)
    first, second = issue(customer), issue(customer)
    assert second.id == first.id
    [listed] = gateway.invoices_list(customer_id=customer)
    assert (listed.id, listed.total, len(listed.lines.data)) == (first.id, 76800, 1)
    with pytest.raises(gateway.PaymentError):  # the same key for another request
        issue(customer, amount=100)
    assert [i.total for i in gateway.invoices_list(customer_id=customer)] == [76800]


def test_paying_with_the_saved_card_pays_it_and_says_by_what(organization, stripe_api):
    customer = customer_of(organization)
    invoice = issue(customer)
    method = saved_card(stripe_api, customer)
    paid = at_stripe(stripe_api, f"/v1/invoices/{invoice.id}/pay", payment_method=method).json()
    assert (paid["status"], paid["amount_paid"], paid["amount_remaining"]) == ("paid", 76800, 0)
    assert paid["status_transitions"]["paid_at"] >= invoice.status_transitions.finalized_at
    [payment] = gateway.invoice_payments_list(invoice_id=invoice.id)
    assert (payment.amount_paid, payment.status, payment.payment.type) == (
        76800,
        "paid",
        "payment_intent",
    )
    intent = gateway.payment_intent_retrieve(payment.payment.payment_intent)
    assert (intent.status, intent.amount, intent.customer) == ("succeeded", 76800, customer)
    again = at_stripe(stripe_api, f"/v1/invoices/{invoice.id}/pay", payment_method=method)
    assert (again.status_code, again.json()["error"]["message"]) == (
        400,
        "Invoice is already paid.",
    )


def test_a_payment_intent_that_paid_an_invoice_is_no_unknown_payment(organization, stripe_api):
    """Stripe announces the card payment of an invoice as payment_intent.succeeded too; it is
    the invoice's money, not a payment nobody made."""
    customer = customer_of(organization)
    invoice = issue(customer)
    method = saved_card(stripe_api, customer)
    at_stripe(stripe_api, f"/v1/invoices/{invoice.id}/pay", payment_method=method)
    [paid] = gateway.invoice_payments_list(invoice_id=invoice.id)
    intent = gateway.payment_intent_retrieve(paid.payment.payment_intent)
    assert gateway.payment_intent_paid_an_invoice(intent) is True
    assert payments.payment_sync(payment_intent_id=intent.id) is None
    assert FinanceFlag.objects.count() == 0
    # Newer API versions no longer name the invoice on the intent: the invoice payments say it.
    del intent["invoice"]
    assert gateway.payment_intent_paid_an_invoice(intent) is True
    # A card payment nobody of ours made, for no invoice, is still flagged.
    stray = gateway.payment_intent_create(
        amount_minor=1000, currency="usd", customer_id=customer, payment_method_id=method,
        off_session=True, metadata={}, idempotency_key="stray",
    )  # fmt: skip
    assert payments.payment_sync(payment_intent_id=stray.id) is None
    assert list(FinanceFlag.objects.values_list("kind", "stripe_object_id")) == [
        (FinanceFlag.Kind.UNKNOWN_PAYMENT, stray.id)
    ]


def test_paying_with_the_customers_default_card_or_out_of_band(organization, stripe_api):
    customer = customer_of(organization)
    method = saved_card(stripe_api, customer)
    requests.post(
        f"{stripe_api}/v1/customers/{customer}",
        data={"invoice_settings[default_payment_method]": method},
        auth=(SECRET_KEY, ""),
        timeout=10,
    ).raise_for_status()
    by_card = issue(customer, key="a")
    assert at_stripe(stripe_api, f"/v1/invoices/{by_card.id}/pay").json()["amount_paid"] == 76800
    elsewhere = issue(customer, amount=5000, key="b")
    paid = at_stripe(stripe_api, f"/v1/invoices/{elsewhere.id}/pay", paid_out_of_band="true")
    assert (paid.json()["status"], paid.json()["paid_out_of_band"]) == ("paid", True)
    assert gateway.invoice_retrieve(elsewhere.id).amount_paid == 5000
    assert gateway.invoice_payments_list(invoice_id=elsewhere.id) == []  # no money moved here


def test_a_declined_card_leaves_the_invoice_open(organization, stripe_api):
    customer = customer_of(organization)
    invoice = issue(customer)
    method = saved_card(stripe_api, customer, DECLINED)
    answer = at_stripe(stripe_api, f"/v1/invoices/{invoice.id}/pay", payment_method=method)
    assert (answer.status_code, answer.json()["error"]["code"]) == (402, "card_declined")
    again = gateway.invoice_retrieve(invoice.id)
    assert (again.status, again.amount_remaining, again.attempt_count) == ("open", 76800, 1)


def test_void_and_uncollectible(organization, stripe_api):
    customer = customer_of(organization)
    voided = gateway.invoice_void(invoice_id=issue(customer, key="a").id, idempotency_key="v")
    assert (voided.status, voided.amount_remaining, voided.amount_due) == ("void", 0, 76800)
    assert voided.status_transitions.voided_at is not None
    with pytest.raises(gateway.PaymentError):
        gateway.invoice_void(invoice_id=voided.id, idempotency_key="v-again")
    refused = at_stripe(stripe_api, f"/v1/invoices/{voided.id}/pay", paid_out_of_band="true")
    assert (refused.status_code, gateway.invoice_retrieve(voided.id).status) == (400, "void")
    lost = issue(customer, key="b")
    marked = at_stripe(stripe_api, f"/v1/invoices/{lost.id}/mark_uncollectible").json()
    assert (marked["status"], marked["amount_remaining"]) == ("uncollectible", 76800)
    late = at_stripe(stripe_api, f"/v1/invoices/{lost.id}/pay", paid_out_of_band="true").json()
    assert (late["status"], late["amount_paid"]) == ("paid", 76800)  # paid after all


def test_a_credit_note_on_an_open_invoice_lowers_what_is_owed(organization, stripe_api):
    customer = customer_of(organization)
    invoice = issue(customer)
    note = gateway.credit_note_create(
        invoice_id=invoice.id, amount_minor=38400, memo="Canceled: 50%", paid=False,
        idempotency_key="credit:rsv_1",
    )  # fmt: skip
    assert note.id.startswith("cn_")
    assert (note.amount, note.invoice, note.memo, note.status, note.type) == (
        38400,
        invoice.id,
        "Canceled: 50%",
        "issued",
        "pre_payment",
    )
    again = gateway.invoice_retrieve(invoice.id)
    assert (again.total, again.amount_due, again.amount_remaining) == (76800, 38400, 38400)
    assert again.pre_payment_credit_notes_amount == 38400
    assert [n.id for n in gateway.credit_notes_list(invoice_id=invoice.id)] == [note.id]
    # More than is left is refused, and changes nothing.
    with pytest.raises(gateway.PaymentError):
        gateway.credit_note_create(
            invoice_id=invoice.id, amount_minor=38401, memo="x", paid=False, idempotency_key="x"
        )
    assert len(gateway.credit_notes_list(invoice_id=invoice.id)) == 1
    paid = at_stripe(stripe_api, f"/v1/invoices/{invoice.id}/pay", paid_out_of_band="true")
    assert (paid.json()["amount_paid"], paid.json()["amount_remaining"]) == (38400, 0)


def test_crediting_an_open_invoice_in_full_marks_it_paid(organization, stripe_api):
    invoice = issue(customer_of(organization))
    gateway.credit_note_create(
        invoice_id=invoice.id, amount_minor=76800, memo="All", paid=False, idempotency_key="c"
    )
    again = gateway.invoice_retrieve(invoice.id)
    assert (again.status, again.amount_paid, again.amount_remaining) == ("paid", 0, 0)


def test_a_credit_note_on_a_paid_invoice_is_credit_the_next_invoice_uses(organization, stripe_api):
    customer = customer_of(organization)
    invoice = issue(customer, key="a")
    at_stripe(stripe_api, f"/v1/invoices/{invoice.id}/pay", paid_out_of_band="true")
    note = gateway.credit_note_create(
        invoice_id=invoice.id, amount_minor=76800, memo="Failed block", paid=True,
        idempotency_key="credit:rsv_1",
    )  # fmt: skip
    assert (note.type, note.post_payment_amount, note.customer_balance_transaction[:6]) == (
        "post_payment",
        76800,
        "cbtxn_",
    )
    again = gateway.invoice_retrieve(invoice.id)
    assert (again.status, again.amount_paid, again.post_payment_credit_notes_amount) == (
        "paid",
        76800,
        76800,
    )
    following = issue(customer, amount=100000, key="b")
    assert (following.total, following.amount_due, following.starting_balance) == (
        100000,
        23200,
        -76800,
    )
    # A paid invoice's credit must say where the money goes; it cannot go past what was paid.
    unsaid = at_stripe(stripe_api, "/v1/credit_notes", invoice=invoice.id, amount=1)
    assert unsaid.status_code == 400
    assert [n.id for n in gateway.credit_notes_list(invoice_id=invoice.id)] == [note.id]


def test_an_invoice_the_customers_balance_paid_can_be_credited_back_to_it(organization, stripe_api):
    """The credit a post-payment note left pays the next invoice at finalization (paid, nothing
    paid by the customer); crediting that invoice in full gives the balance back, as Stripe
    does, for the invoice after it."""
    customer = customer_of(organization)
    first = issue(customer, amount=4144, key="a")
    at_stripe(stripe_api, f"/v1/invoices/{first.id}/pay", paid_out_of_band="true")
    gateway.credit_note_create(
        invoice_id=first.id, amount_minor=4144, memo="Canceled", paid=True,
        idempotency_key="credit:rsv_1",
    )  # fmt: skip
    second = issue(customer, amount=4144, key="b")
    assert (second.status, second.amount_paid, second.amount_due, second.starting_balance) == (
        "paid",
        0,
        0,
        -4144,
    )
    note = gateway.credit_note_create(
        invoice_id=second.id, amount_minor=4144, memo="Canceled", paid=True,
        idempotency_key="credit:rsv_2",
    )  # fmt: skip
    assert (note.type, note.post_payment_amount) == ("post_payment", 4144)
    too_much = at_stripe(
        stripe_api, "/v1/credit_notes", invoice=second.id, amount=1, credit_amount=1
    )
    assert (too_much.status_code, too_much.json()["error"]["message"]) == (
        400,
        f"The credit note amount (1) is greater than what is left to credit on invoice "
        f"{second.id} (0).",
    )
    third = issue(customer, amount=5000, key="c")
    assert (third.status, third.amount_due, third.starting_balance) == ("open", 856, -4144)


def test_lists_are_per_customer_and_per_invoice_newest_first(
    organization, other_organization, stripe_api
):
    mine, theirs = customer_of(organization), customer_of(other_organization)
    first, second = issue(mine, key="a"), issue(mine, key="b")
    issue(theirs, key="c")
    assert [i.id for i in gateway.invoices_list(customer_id=mine)] == [second.id, first.id]
    assert [i.number[-4:] for i in gateway.invoices_list(customer_id=mine)] == ["0002", "0001"]
    notes = [
        gateway.credit_note_create(
            invoice_id=first.id, amount_minor=100, memo=str(n), paid=False, idempotency_key=str(n)
        ).id
        for n in range(2)
    ]
    assert [n.id for n in gateway.credit_notes_list(invoice_id=first.id)] == notes[::-1]
    assert gateway.credit_notes_list(invoice_id=second.id) == []
    assert gateway.invoicing_offered() is True


def test_wiping_localstripe_forgets_invoices_and_idempotency_keys(organization, stripe_api):
    customer = customer_of(organization)
    invoice = issue(customer)
    requests.delete(f"{stripe_api}/_config/data", timeout=10).raise_for_status()
    with pytest.raises(gateway.PaymentError):
        gateway.invoice_retrieve(invoice.id)
    assert gateway.credit_notes_list(invoice_id=invoice.id) == []


def test_invoices_survive_a_restart_with_a_state_file(tmp_path, settings):
    """make run keeps localstripe's state in var/localstripe.pickle across restarts."""
    state = tmp_path / "localstripe.pickle"
    port = _free_port()
    settings.STRIPE_SECRET_KEY, settings.STRIPE_MAX_NETWORK_RETRIES = SECRET_KEY, 0
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{port}"
    with _server(port, state):
        customer = gateway.customer_create(
            name="Acme", email="billing@acme.test", metadata={}, idempotency_key="customer"
        ).id
        invoice = issue(customer)
        gateway.credit_note_create(
            invoice_id=invoice.id, amount_minor=800, memo="m", paid=False, idempotency_key="n"
        )
    with _server(port, state):
        again = gateway.invoice_retrieve(invoice.id)
        assert (again.status, again.amount_remaining, again.number) == (
            "open",
            76000,
            invoice.number,
        )
        assert issue(customer).id == invoice.id  # the idempotency key is remembered too


class _server:
    def __init__(self, port: int, state: Path) -> None:
        self.port, self.state = port, state

    def __enter__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "billing.localstripe_server", "--port", str(self.port),
             "--state", str(self.state)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{self.port}/v1/balance", timeout=1)
                return
            except requests.ConnectionError:
                assert self.process.poll() is None, "localstripe exited"
                assert time.monotonic() < deadline, "localstripe did not start"
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- Webhooks ---------------------------------------------------------------------------------
class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.put((body, self.headers["Stripe-Signature"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Listener(HTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.received: queue.Queue = queue.Queue()


def _register(api: str, name: str, url: str, events: list[str]) -> None:
    requests.post(
        f"{api}/_config/webhooks/{name}",
        json={"url": url, "secret": WEBHOOK_SECRET, "events": events},
        timeout=10,
    ).raise_for_status()


@pytest.fixture
def webhook_listener(stripe_api: str) -> Iterator[queue.Queue]:
    """A tiny endpoint localstripe delivers invoice events to; silenced afterwards (localstripe
    keeps webhooks for its whole run)."""
    server = _Listener()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    _register(stripe_api, "invoice-tests", url, ["invoice.paid", "credit_note.created"])
    yield server.received
    _register(stripe_api, "invoice-tests", url, [])
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_invoice_paid_is_delivered_signed(organization, stripe_api, webhook_listener):
    invoice = issue(customer_of(organization))
    at_stripe(stripe_api, f"/v1/invoices/{invoice.id}/pay", paid_out_of_band="true")
    deadline = time.monotonic() + 10
    while True:  # events of earlier tests may still be on their way (localstripe waits 1 s)
        body, signature = webhook_listener.get(timeout=max(0.1, deadline - time.monotonic()))
        event = json.loads(body)
        if event["data"]["object"]["id"] == invoice.id:
            break
    gateway.verify_webhook(body, signature)  # raises if the signature is not ours
    assert (event["type"], event["id"][:4]) == ("invoice.paid", "evt_")
    delivered = event["data"]["object"]
    assert (delivered["status"], delivered["amount_paid"], delivered["amount_remaining"]) == (
        "paid",
        76800,
        0,
    )


def events_about(api: str, object_id: str) -> list[str]:
    answer = requests.get(
        f"{api}/v1/events", params={"limit": 100}, auth=(SECRET_KEY, ""), timeout=10
    )
    return [e["type"] for e in answer.json()["data"] if e["data"]["object"].get("id") == object_id]


def test_every_step_is_an_event(organization, stripe_api):
    customer = customer_of(organization)
    paid = issue(customer, key="a")
    at_stripe(
        stripe_api, f"/v1/invoices/{paid.id}/pay", payment_method=saved_card(stripe_api, customer)
    )
    note = gateway.credit_note_create(
        invoice_id=paid.id, amount_minor=100, memo="m", paid=True, idempotency_key="n"
    )
    voided = issue(customer, key="b")
    gateway.invoice_void(invoice_id=voided.id, idempotency_key="v")
    lost = issue(customer, key="c")
    at_stripe(stripe_api, f"/v1/invoices/{lost.id}/mark_uncollectible")
    steps = ["invoice.created", "invoice.finalized", "invoice.sent"]
    assert events_about(stripe_api, paid.id) == [
        *steps,
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    assert events_about(stripe_api, note.id) == ["credit_note.created"]
    assert events_about(stripe_api, voided.id) == [*steps, "invoice.voided"]
    assert events_about(stripe_api, lost.id) == [*steps, "invoice.marked_uncollectible"]


# --- End to end: invoice terms, paid at Stripe, booked here, checked ---------------------------
def check_books() -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("check_books", "--grace", "0", stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_invoice_terms_end_to_end_at_localstripe(
    catalog, organization, owner, stripe_api, live_server
):
    """Confirmed on invoice terms -> invoiced at localstripe -> paid there by card -> the
    signed invoice.paid webhook books the payment here -> check_books agrees; then a credit
    note made at Stripe behind our back is caught."""
    hook = f"{live_server.url}/stripe/webhook/"
    _register(stripe_api, "hyperblock-invoices", hook, ["invoice.paid"])
    try:
        Organization.objects.filter(pk=organization.pk).update(
            payment_terms="invoice", payment_days=30, credit_limit=Decimal("10000")
        )
        organization.refresh_from_db()
        reservation = held_reservation(organization, owner, catalog)  # settled on commit
        assert reservation.state == Reservation.State.SCHEDULED
        settlement.reservation_settle(reservation_id=reservation.pk)  # again: nothing new
        invoice = Invoice.objects.get(reservation=reservation)
        at_stripe_now = gateway.invoice_retrieve(invoice.stripe_invoice_id)
        assert (invoice.status, invoice.amount, invoice.number) == (
            "open",
            Decimal("768.00"),
            at_stripe_now.number,
        )
        assert (at_stripe_now.status, at_stripe_now.amount_due) == ("open", 76800)
        assert int(invoice.due_at.timestamp()) == at_stripe_now.due_date
        assert invoice.hosted_invoice_url == at_stripe_now.hosted_invoice_url
        assert len(gateway.invoices_list(customer_id=customer_of(organization))) == 1
        method = saved_card(stripe_api, customer_of(organization))
        paid = at_stripe(
            stripe_api, f"/v1/invoices/{invoice.stripe_invoice_id}/pay", payment_method=method
        )
        assert paid.json()["status"] == "paid"
        processed = WebhookProcessing.objects.filter(
            event__object_id=invoice.stripe_invoice_id, status="processed"
        )
        deadline = time.monotonic() + 15
        while not processed.exists():
            assert time.monotonic() < deadline, "invoice.paid was not delivered and processed"
            time.sleep(0.2)
        delivered = WebhookEvent.objects.filter(object_id=invoice.stripe_invoice_id)
        assert list(delivered.values_list("type", flat=True)) == ["invoice.paid"]
    finally:
        _register(stripe_api, "hyperblock-invoices", hook, [])
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert sorted(LedgerEntry.objects.filter(invoice=invoice).values_list("kind", "amount")) == [
        ("charge", Decimal("768.00")),
        ("invoice_payment", Decimal("-768.00")),
    ]
    assert selectors.balance_for_org(organization) == Decimal("0.00")
    code, out = check_books()
    assert (code, out.splitlines()) == (
        0,
        [
            "check_books: the books agree with Stripe; checked 1 organization, 0 payments, "
            "0 refunds, 1 invoice with Stripe and 1 reservation; 0 left for the next run "
            "(too recent); 0 new finance flags"
        ],
    )
    # A credit note made in Stripe's dashboard: our code never hears of it.
    at_stripe(
        stripe_api,
        "/v1/credit_notes",
        invoice=invoice.stripe_invoice_id,
        amount=10000,
        credit_amount=10000,
    ).raise_for_status()
    code, out = check_books()
    assert (code, out.splitlines()[0]) == (
        1,
        f"{organization.slug}: invoice {invoice.stripe_invoice_id}: credited: "
        "ledger $0.00, Stripe $100.00",
    )


def on_invoice_terms(organization: Organization) -> None:
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", payment_days=30, credit_limit=Decimal("10000")
    )
    organization.refresh_from_db()


AGREE = (
    "check_books: the books agree with Stripe; checked 1 organization, 0 payments, 0 refunds, "
    "1 invoice with Stripe and 1 reservation; 0 left for the next run (too recent); "
    "0 new finance flags"
)


@pytest.mark.parametrize(
    ("how", "stripe_status", "notes", "paid"),
    [
        ("canceled in full", "void", [], 0),
        ("canceled at 50%", "paid", [("pre_payment", 38400)], 38400),
        ("failed after it was paid", "paid", [("post_payment", 76800)], 76800),
    ],
)
def test_settling_at_localstripe_leaves_books_that_agree(
    catalog, organization, owner, stripe_api, settings, how, stripe_status, notes, paid
):
    """Settlement's voids and credit notes, answered by localstripe as Stripe would, and the
    customer paying what is left: check_books finds the ledger equal to Stripe."""
    settings.CAPACITY_CANCELLATION_POLICY = [(timedelta(days=30), 100), (timedelta(0), 50)]
    if how == "canceled in full":
        settings.CAPACITY_CANCELLATION_POLICY = [(timedelta(0), 100)]
    on_invoice_terms(organization)
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=10)
    reservation = held_reservation(organization, owner, catalog, start=start)
    settlement.reservation_settle(reservation_id=reservation.pk)
    invoice = Invoice.objects.get(reservation=reservation)
    stripe_id = str(invoice.stripe_invoice_id)

    def pay_what_is_left() -> None:
        at_stripe(stripe_api, f"/v1/invoices/{stripe_id}/pay", paid_out_of_band="true")
        invoices.invoice_sync(stripe_invoice_id=stripe_id)

    if how == "failed after it was paid":
        pay_what_is_left()
        Reservation.objects.filter(pk=reservation.pk).update(state=Reservation.State.FAILED)
    else:
        capacity_services.reservation_cancel(reservation=reservation, actor=owner, reason="x")
    settlement.reservation_settle(reservation_id=reservation.pk)
    if how == "canceled at 50%":
        pay_what_is_left()
    at_stripe_now = gateway.invoice_retrieve(stripe_id)
    assert (at_stripe_now.status, at_stripe_now.amount_paid) == (stripe_status, paid)
    assert [(n.type, n.amount) for n in gateway.credit_notes_list(invoice_id=stripe_id)] == notes
    assert selectors.balance_for_org(organization) == Decimal(
        "-768.00" if how == "failed after it was paid" else "0.00"
    )  # a failed block's credit waits on the customer's balance for the next invoice
    assert check_books() == (0, AGREE + "\n")


def test_localstripes_own_posts_honour_the_idempotency_key(
    catalog, organization, owner, stripe_api
):
    """A refund retried with its key (the Stripe library retries a request that timed out) is
    one refund, as at Stripe; the key with another body is refused."""
    payment = payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog),
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="idem",
    )
    intent = payment.stripe_payment_intent_id

    def refund(amount: int) -> requests.Response:
        return requests.post(
            f"{stripe_api}/v1/refunds",
            data={"payment_intent": intent, "amount": amount},
            headers={"Idempotency-Key": "refund:once"},
            auth=(SECRET_KEY, ""),
            timeout=10,
        )

    first, again = refund(1000), refund(1000)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = refund(2000)
    assert (other.status_code, other.json()["error"]["type"]) == (400, "idempotency_error")
    assert [r.amount for r in gateway.refunds_list(payment_intent_id=intent)] == [1000]
