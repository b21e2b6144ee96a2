"""SLA credits against the real localstripe: a block that ran degraded, started late or was
force-released by staff gets its pro-rated credit back once, never more than was paid.

Every block here is 2 or 4 H100 nodes at $2.00 per GPU-hour (8 GPUs a node): $16.00 a
node-hour, so a 24-hour block of 2 nodes is $768.00 and of 4 nodes $1,536.00."""

import json
import re
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import requests
import responses
import time_machine
from celery.exceptions import Retry
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.urls import reverse

from accounts.models import Organization
from billing import gateway, tasks
from billing.models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund, SlaCredit
from billing.services import invoices, payments, settlement
from billing.services.refunds import refund_issue
from capacity import lifecycle, operations, provisioning
from capacity.models import Incident, Reservation, SimulatedNode
from core.models import AuditEvent
from tests.backoffice.conftest import make_staff
from tests.conftest import client_for

from .conftest import SECRET_KEY, card, held_reservation
from .test_invoices_and_disputes import invoice_json

pytestmark = pytest.mark.usefixtures("stripe_api")
S = Reservation.State
POLICY = {
    "degraded": {"percent": Decimal("100"), "grace_minutes": 0, "round_up_to_hour": False},
    "late_start": {"percent": Decimal("50"), "grace_minutes": 15, "round_up_to_hour": True},
    "force_released": {"percent": Decimal("25"), "grace_minutes": 0, "round_up_to_hour": False},
}


@pytest.fixture(autouse=True)
def _policy(settings) -> None:
    settings.SLA_CREDIT_POLICY = POLICY


def paid(organization, owner, catalog, api, nodes: int = 2) -> tuple[Reservation, Payment]:
    reservation = held_reservation(organization, owner, catalog, nodes=nodes)
    payment = payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(api), attempt_token="pay"
    )
    reservation.refresh_from_db()
    assert (reservation.state, payment.status) == (S.SCHEDULED, "succeeded")
    return reservation, payment


def start(reservation: Reservation, capture, late: timedelta = timedelta(0)) -> None:
    """Provision the block, the nodes coming up `late` after its start (or 5 minutes early)."""
    lifecycle.reservation_transition(reservation=reservation, to=S.PROVISIONING, actor=None)
    at = reservation.starts_at + late if late else reservation.starts_at - timedelta(minutes=5)
    with time_machine.travel(at, tick=False), capture(execute=True):
        assert provisioning.block_provision(reservation.pk) == S.ACTIVE


def stripe_refunds(payment: Payment) -> list[int]:
    return sorted(
        r.amount for r in gateway.refunds_list(payment_intent_id=payment.stripe_payment_intent_id)
    )


def ledger(reservation: Reservation) -> list[tuple[str, Decimal]]:
    return list(
        LedgerEntry.objects.filter(reservation=reservation)
        .order_by("id")
        .values_list("kind", "amount")
    )


def credit_row(credit: SlaCredit) -> tuple:
    return (
        credit.cause,
        credit.key,
        credit.minutes,
        credit.node_hours,
        credit.percent,
        credit.computed,
        credit.amount,
        credit.method,
        credit.status,
    )


def test_a_late_start_is_credited_by_the_hours_begun_to_the_card(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation, payment = paid(organization, owner, catalog, stripe_api)
    mail.outbox.clear()
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=61))
    credit = SlaCredit.objects.get()
    # 61 minutes late: 2 hours begun x 2 nodes x $16.00 x 50%.
    assert credit_row(credit) == (
        "late_start", "start", 61, Decimal("4.0000"), Decimal("50.00"),
        Decimal("32.00"), Decimal("32.00"), "refund", "granted",
    )  # fmt: skip
    refund = Refund.objects.get()
    assert (refund.payment_id, refund.amount, refund.settles, refund.status) == (
        payment.pk,
        Decimal("32.00"),
        f"sla:{credit.pk}",
        "succeeded",
    )
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("32.00")
    assert stripe_refunds(payment) == [3200]
    assert sorted(ledger(reservation)) == [
        ("charge", Decimal("768.00")),
        ("credit", Decimal("-32.00")),
        ("payment", Decimal("-768.00")),
        ("refund", Decimal("32.00")),
    ]
    opened = AuditEvent.objects.get(action="sla_credit.opened")
    assert (opened.actor_kind, opened.object_id, opened.data["amount"], opened.data["minutes"]) == (
        "system",
        str(reservation.pk),
        "32.00",
        61,
    )
    assert AuditEvent.objects.filter(action="sla_credit.granted").count() == 1
    [message] = [m for m in mail.outbox if "credit" in m.subject]
    assert message.subject == f"A credit of $32.00 for {reservation.public_id}"
    assert message.to == [organization.billing_email]
    assert "started late: its nodes were up 61 minutes after its start" in message.body
    assert "credit you 50% of the price of the 4 node-hours affected: $32.00." in message.body
    assert f"/o/{organization.slug}/reservations/{reservation.public_id}/" in message.body
    assert "refunded to the card the block was paid with" in message.body


def test_a_start_within_the_grace_earns_nothing(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation, _ = paid(organization, owner, catalog, stripe_api)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=14))
    assert (SlaCredit.objects.count(), Refund.objects.count()) == (0, 0)


def test_a_degraded_block_is_credited_once_for_the_failed_node_time(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    """East-a has 4 nodes: a 4-node block there has no spare when one fails. Resolving the
    incident measures the time; the block's end reports the same incident again: one credit."""
    reservation, payment = paid(organization, owner, catalog, stripe_api, nodes=4)
    start(reservation, django_capture_on_commit_callbacks)
    sick = reservation.allocations.order_by("node__hostname").first().node
    SimulatedNode.objects.update_or_create(hostname=sick.hostname, defaults={"fault": "GPU 3 lost"})
    with time_machine.travel(reservation.starts_at + timedelta(hours=2), tick=False):
        assert provisioning.provisioning_reconcile()["unhealthy"] == 1
    incident = Incident.objects.get(reservation=reservation, node=sick)
    ops = make_staff(superuser=True)
    with (
        time_machine.travel(reservation.starts_at + timedelta(hours=5, minutes=30), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        operations.incident_resolve(incident=incident, actor=ops, note="Node replaced.")
    with (
        time_machine.travel(reservation.ends_at, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert provisioning.reservation_end_due() == 1
    reservation.refresh_from_db()
    assert reservation.state == S.COMPLETED
    credit = SlaCredit.objects.get()
    # 3 h 30 min of one failed node x $16.00 x 100%.
    assert credit_row(credit) == (
        "degraded", f"incident:{incident.pk}", 210, Decimal("3.5000"), Decimal("100.00"),
        Decimal("56.00"), Decimal("56.00"), "refund", "granted",
    )  # fmt: skip
    assert list(Refund.objects.values_list("amount", "settles")) == [
        (Decimal("56.00"), f"sla:{credit.pk}")
    ]
    assert stripe_refunds(payment) == [5600]


def test_a_degraded_incident_still_open_is_credited_at_the_end_of_the_block(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation, payment = paid(organization, owner, catalog, stripe_api, nodes=4)
    start(reservation, django_capture_on_commit_callbacks)
    sick = reservation.allocations.order_by("node__hostname").first().node
    SimulatedNode.objects.update_or_create(hostname=sick.hostname, defaults={"fault": "PSU"})
    with time_machine.travel(reservation.ends_at - timedelta(hours=1, minutes=15), tick=False):
        provisioning.provisioning_reconcile()
    with (
        time_machine.travel(reservation.ends_at, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        provisioning.reservation_end_due()
    credit = SlaCredit.objects.get()
    assert (credit.minutes, credit.amount, credit.status) == (75, Decimal("20.00"), "granted")
    # The block is over; staff closing the incident later changes nothing.
    incident = Incident.objects.get(reservation=reservation, node=sick)
    with django_capture_on_commit_callbacks(execute=True):
        operations.incident_resolve(incident=incident, actor=make_staff(superuser=True))
    assert SlaCredit.objects.count() == 1
    assert stripe_refunds(payment) == [2000]


def test_a_force_release_is_credited_for_the_unused_time(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation, payment = paid(organization, owner, catalog, stripe_api)
    start(reservation, django_capture_on_commit_callbacks)
    ops = make_staff(superuser=True)
    # Released with 20 h 10 min left: 2 nodes x 20 1/6 h x $16.00 x 25% = $161.33.
    with (
        time_machine.travel(reservation.ends_at - timedelta(hours=20, minutes=10), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        operations.reservation_release(reservation=reservation, actor=ops, reason="Abuse report")
    reservation.refresh_from_db()
    assert reservation.state == S.COMPLETED
    credit = SlaCredit.objects.get()
    assert credit_row(credit) == (
        "force_released", "release", 1210, Decimal("40.3333"), Decimal("25.00"),
        Decimal("161.33"), Decimal("161.33"), "refund", "granted",
    )  # fmt: skip
    assert stripe_refunds(payment) == [16133]


def test_the_same_trigger_again_grants_nothing_more(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation, payment = paid(organization, owner, catalog, stripe_api)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=30))
    first = SlaCredit.objects.get()
    # The hook delivered twice (a retried task, a sweep), even with another measure.
    for minutes in (30, 200):
        again = tasks.grant_sla_credit(
            reservation_id=reservation.pk, cause="late_start", key="start", minutes=minutes
        )
        assert again == first.public_id
    assert SlaCredit.objects.count() == 1
    assert list(Refund.objects.values_list("amount", flat=True)) == [Decimal("16.00")]
    assert stripe_refunds(payment) == [1600]
    assert AuditEvent.objects.filter(action="sla_credit.granted").count() == 1


def test_a_credit_is_never_more_than_is_still_paid(
    catalog, organization, owner, stripe_api, settings, django_capture_on_commit_callbacks
):
    """Finance already gave back $700.00 of $768.00; a release with 20 h left would credit
    $640.00 at 100%: only the $68.00 still paid goes back, and a further credit gets nothing."""
    settings.SLA_CREDIT_POLICY = {
        **POLICY,
        "force_released": {"percent": Decimal("100"), "grace_minutes": 0},
    }
    reservation, payment = paid(organization, owner, catalog, stripe_api)
    refund_issue(payment=payment, amount=Decimal("700.00"), reason="Goodwill", actor=None)
    start(reservation, django_capture_on_commit_callbacks)
    with (
        time_machine.travel(reservation.ends_at - timedelta(hours=20), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        operations.reservation_release(
            reservation=reservation, actor=make_staff(superuser=True), reason="Rack fire"
        )
    credit = SlaCredit.objects.get()
    assert (credit.computed, credit.amount, credit.status) == (
        Decimal("640.00"),
        Decimal("68.00"),
        "granted",
    )
    payment.refresh_from_db()
    assert payment.amount_refunded == payment.amount == Decimal("768.00")
    assert stripe_refunds(payment) == [6800, 70000]
    # A degraded credit measured afterwards finds nothing left.
    assert (
        tasks.grant_sla_credit(
            reservation_id=reservation.pk, cause="degraded", key="incident:1", minutes=60
        )
        is None
    )
    assert SlaCredit.objects.count() == 1
    [message] = [m for m in mail.outbox if m.subject.startswith("A credit")]
    assert "the full credit would have been $640.00" in message.body


@pytest.fixture
def fake_invoices(stripe_api):
    """Stripe's invoice and credit note endpoints answered at the HTTP boundary, as in
    test_invoices_and_disputes.py, for what localstripe cannot be made to do: refuse a credit
    note the invoice has room for. Everything else goes to localstripe."""
    state = {"status": "draft", "customer": "", "amount": 0}
    notes: list[tuple[str | None, dict]] = []

    def form(request) -> dict:
        return dict(x.split("=", 1) for x in request.body.split("&"))

    def answer(status: str | None = None):
        def handler(request):
            if status:
                state["status"] = status
            return (
                200,
                {},
                json.dumps(
                    invoice_json("in_test_1", state["status"], state["customer"], state["amount"])
                ),
            )

        return handler

    def create(request):
        state["customer"] = form(request)["customer"]
        return answer()(request)

    def item(request):
        state["amount"] = int(form(request)["amount"])
        return 200, {}, json.dumps({"id": "ii_test_1", "object": "invoiceitem"})

    def credit_note(request):
        body = form(request)
        notes.append((request.headers.get("Idempotency-Key"), body))
        if state.get("refuse"):
            error = {"message": "Exceeds the invoice.", "type": "invalid_request_error"}
            return 400, {}, json.dumps({"error": error})
        return 200, {}, json.dumps(
            {"id": f"cn_test_{len(notes)}", "object": "credit_note", "amount": int(body["amount"]),
             "currency": "usd", "invoice": body["invoice"], "status": "issued"}
        )  # fmt: skip

    base = re.escape(stripe_api)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(stripe_api)
        post, get = responses.POST, responses.GET
        mock.add_callback(post, re.compile(base + r"/v1/invoices$"), callback=create)
        mock.add_callback(post, re.compile(base + r"/v1/invoiceitems$"), callback=item)
        for action in ("finalize", "send"):
            mock.add_callback(
                post, re.compile(base + rf"/v1/invoices/in_test_1/{action}$"), answer("open")
            )
        mock.add_callback(get, re.compile(base + r"/v1/invoices/in_test_1$"), answer())
        mock.add_callback(post, re.compile(base + r"/v1/credit_notes$"), callback=credit_note)
        yield state, notes


def invoiced(organization, owner, catalog) -> tuple[Reservation, Invoice]:
    Organization.objects.filter(pk=organization.pk).update(
        payment_terms="invoice", payment_days=30, credit_limit=Decimal("10000")
    )
    organization.refresh_from_db()
    reservation = held_reservation(organization, owner, catalog)
    if reservation.state == S.HELD:
        lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)
    settlement.reservation_settle(reservation_id=reservation.pk)
    reservation.refresh_from_db()
    return reservation, Invoice.objects.get()


def pay_at_stripe(api: str, invoice: Invoice) -> None:
    """The customer pays the invoice at Stripe (out of band); its webhook's work done here."""
    requests.post(
        f"{api}/v1/invoices/{invoice.stripe_invoice_id}/pay",
        data={"paid_out_of_band": "true"},
        auth=(SECRET_KEY, ""),
        timeout=10,
    ).raise_for_status()
    invoices.invoice_sync(stripe_invoice_id=str(invoice.stripe_invoice_id))


@pytest.mark.parametrize("status", ["open", "paid"])
def test_on_invoice_terms_a_credit_note_goes_on_the_latest_invoice(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks, status
):
    reservation, invoice = invoiced(organization, owner, catalog)
    stripe_id = str(invoice.stripe_invoice_id)
    assert (invoice.status, invoice.amount) == ("open", Decimal("768.00"))
    if status == "paid":
        pay_at_stripe(stripe_api, invoice)
        invoice.refresh_from_db()
        assert invoice.status == "paid"
    mail.outbox.clear()
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=100))
    credit = SlaCredit.objects.get()
    # 100 minutes late: 2 hours begun x 2 nodes x $16.00 x 50%.
    assert credit_row(credit) == (
        "late_start", "start", 100, Decimal("4.0000"), Decimal("50.00"),
        Decimal("32.00"), Decimal("32.00"), "credit_note", "granted",
    )  # fmt: skip
    [note] = gateway.credit_notes_list(invoice_id=stripe_id)
    assert (credit.invoice_id, credit.stripe_credit_note_id) == (invoice.pk, note.id)
    # On a paid invoice the credit goes to the customer's balance (a post-payment note).
    assert (note.amount, note.memo, note.type, bool(note.customer_balance_transaction)) == (
        3200,
        f"SLA credit {credit.public_id} for {reservation.public_id}: Started late",
        "post_payment" if status == "paid" else "pre_payment",
        status == "paid",
    )
    at_stripe = gateway.invoice_retrieve(stripe_id)
    assert at_stripe.amount_remaining == (0 if status == "paid" else 73600)
    # The same grant again (a retried task, the sweep): the same credit, no second note.
    tasks.grant_sla_credit(
        reservation_id=reservation.pk, cause="late_start", key="start", minutes=100
    )
    assert len(gateway.credit_notes_list(invoice_id=stripe_id)) == 1
    assert Refund.objects.count() == 0
    assert ledger(reservation)[-1] == ("credit", Decimal("-32.00"))
    [message] = [m for m in mail.outbox if m.subject.startswith("A credit")]
    assert f"credit note on invoice {invoice.number}" in message.body
    assert (
        "taken off your next invoice" if status == "paid" else "lower by the credit"
    ) in message.body


def test_a_credit_note_stripe_refuses_is_failed_and_flags_finance(
    catalog, organization, owner, fake_invoices, django_capture_on_commit_callbacks
):
    state, notes = fake_invoices
    reservation, _ = invoiced(organization, owner, catalog)
    state["refuse"] = True
    mail.outbox.clear()
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=30))
    credit = SlaCredit.objects.get()
    # The gateway's message (Stripe's own text is logged by the gateway).
    assert (credit.status, credit.failure_message) == (
        "failed",
        "The payment could not be processed.",
    )
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.stripe_object_id, flag.detail) == (
        "reconciliation",
        f"sla:{credit.public_id}",
        f"SLA credit {credit.public_id} of $16.00 for {reservation.public_id} could not be paid "
        "back: The payment could not be processed.",
    )
    assert LedgerEntry.objects.filter(kind="credit").count() == 0
    assert [m for m in mail.outbox if m.subject.startswith("A credit")] == []
    # Run again: a failed credit is finance's now, nothing is sent twice.
    tasks.grant_sla_credit(
        reservation_id=reservation.pk, cause="late_start", key="start", minutes=30
    )
    assert len(notes) == 1


@pytest.mark.parametrize("written_off", ["void", "mark_uncollectible"])
def test_a_credit_note_on_an_invoice_written_off_at_stripe_is_not_booked_and_flags_finance(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks, written_off
):
    """Finance voided (or wrote off) the invoice in Stripe's dashboard before its webhook was
    processed: nothing is credited or booked, finance is told, and the invoice follows Stripe
    here so no later credit picks it."""
    reservation, invoice = invoiced(organization, owner, catalog)
    stripe_id = str(invoice.stripe_invoice_id)
    requests.post(
        f"{stripe_api}/v1/invoices/{stripe_id}/{written_off}", auth=(SECRET_KEY, ""), timeout=10
    ).raise_for_status()
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=100))
    credit = SlaCredit.objects.get()
    status = "void" if written_off == "void" else "uncollectible"
    assert (credit.status, credit.amount, credit.failure_message) == (
        "failed", Decimal("32.00"), f"invoice {stripe_id} is {status}",
    )  # fmt: skip
    assert gateway.credit_notes_list(invoice_id=stripe_id) == []
    assert LedgerEntry.objects.filter(kind="credit").count() == 0
    assert FinanceFlag.objects.get().stripe_object_id == f"sla:{credit.public_id}"
    invoice.refresh_from_db()
    assert invoice.status == status


def test_stripe_out_of_reach_leaves_the_credit_pending_for_the_retry(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks, monkeypatch
):
    reservation, invoice = invoiced(organization, owner, catalog)

    def unreachable(**kwargs):
        raise gateway.GatewayUnavailable("Stripe could not be reached.")

    with monkeypatch.context() as patch:
        patch.setattr(gateway, "credit_note_create", unreachable)
        with pytest.raises(Retry):  # the task retries later (eager here: at once, raised)
            start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=30))
    assert SlaCredit.objects.get().status == "pending"
    # The task's retry: the same credit, sent once.
    tasks.grant_sla_credit(
        reservation_id=reservation.pk, cause="late_start", key="start", minutes=30
    )
    credit = SlaCredit.objects.get()
    notes = gateway.credit_notes_list(invoice_id=str(invoice.stripe_invoice_id))
    assert (credit.status, credit.amount, [n.amount for n in notes]) == (
        "granted",
        Decimal("16.00"),
        [1600],
    )


def test_the_reservation_page_shows_the_credit(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation, _ = paid(organization, owner, catalog, stripe_api)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=61))
    page = client_for(owner).get(
        reverse("reservation-detail", args=[organization.slug, reservation.public_id])
    )
    assert page.status_code == 200
    html = page.content.decode()
    credit = SlaCredit.objects.get()
    assert (
        f'<tr data-testid="sla-credit"><td>SLA credit: started late (4 node-hours at 50%), '
        f"refunded to your card on {credit.granted_at:%a %-d %b %Y}</td>"
        '<td class="num">−$32.00</td></tr>'
    ) in html


def test_the_database_allows_one_credit_per_reservation_cause_and_key(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation, _ = paid(organization, owner, catalog, stripe_api)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=30))
    first = SlaCredit.objects.get()
    fields = {
        f.attname: getattr(first, f.attname)
        for f in SlaCredit._meta.concrete_fields
        if f.attname not in ("id", "public_id", "stripe_credit_note_id")
    }
    with pytest.raises(IntegrityError), transaction.atomic():
        SlaCredit.objects.create(**fields)
    SlaCredit.objects.create(**{**fields, "key": "start-again"})  # another key is another credit


# --- Invoice terms at localstripe: the credit note is on the invoice's books ----------------------
def check_books() -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("check_books", "--grace", "0", stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


@pytest.mark.parametrize("then", ["left open", "paid in full after", "canceled later"])
def test_an_sla_credit_note_leaves_books_that_agree_with_stripe(
    catalog, organization, owner, stripe_api, settings, django_capture_on_commit_callbacks, then
):
    """Invoiced at localstripe, started 100 minutes late: a $32.00 credit note on the invoice,
    booked on that invoice and as this credit's. check_books finds the invoice credited $32.00
    on both sides (before, the ledger's row named no invoice: 'ledger $0.00, Stripe $32.00');
    the customer paying what is left, or a cancellation's credit coming on top of it (the
    invoice's own credit, still allowed once), changes nothing to that."""
    reservation, invoice = invoiced(organization, owner, catalog)
    stripe_id = str(invoice.stripe_invoice_id)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=100))
    credit = SlaCredit.objects.get()
    assert (credit.status, credit.amount, credit.invoice_id) == (
        "granted",
        Decimal("32.00"),
        invoice.pk,
    )
    notes = gateway.credit_notes_list(invoice_id=stripe_id)
    assert [(n.id, n.amount) for n in notes] == [(credit.stripe_credit_note_id, 3200)]
    booked = LedgerEntry.objects.get(sla_credit=credit)
    assert (booked.kind, booked.amount, booked.invoice_id, booked.reservation_id) == (
        "credit",
        Decimal("-32.00"),
        invoice.pk,
        reservation.pk,
    )
    if then == "paid in full after":
        at_stripe = f"{stripe_api}/v1/invoices/{stripe_id}/pay"
        requests.post(
            at_stripe, data={"paid_out_of_band": "true"}, auth=(SECRET_KEY, ""), timeout=10
        ).raise_for_status()
        invoices.invoice_sync(stripe_invoice_id=stripe_id)
        assert gateway.invoice_retrieve(stripe_id).amount_paid == 73600  # 768.00 less 32.00
    if then == "canceled later":
        # Settlement credits the invoice once for a cancellation: the SLA credit note already
        # on it is not that credit (without its exemption, nothing would be credited).
        Reservation.objects.filter(pk=reservation.pk).update(
            state=S.CANCELED, refund_due=Decimal("100.00")
        )
        settlement.reservation_settle(reservation_id=reservation.pk)
        assert sorted(n.amount for n in gateway.credit_notes_list(invoice_id=stripe_id)) == [
            3200,
            10000,
        ]
        assert sorted(
            LedgerEntry.objects.filter(invoice=invoice, kind="credit").values_list(
                "amount", "sla_credit"
            )
        ) == [(Decimal("-100.00"), None), (Decimal("-32.00"), credit.pk)]
    with time_machine.travel(reservation.ends_at, tick=False):  # the credit was booked then
        code, out = check_books()
    assert (code, out.splitlines()) == (
        0,
        [
            "check_books: the books agree with Stripe; checked 1 organization, 0 payments, "
            "0 refunds, 1 invoice with Stripe and 1 reservation; 0 left for the next run "
            "(too recent); 0 new finance flags"
        ],
    )


def test_sla_refunds_to_the_card_leave_books_that_agree_with_stripe(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    """Late by 61 minutes ($32.00) and released by staff 20 h 10 min early ($161.33): two
    refunds at localstripe, each booked once, and the reservation's money adds up."""
    reservation, payment = paid(organization, owner, catalog, stripe_api)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=61))
    with (
        time_machine.travel(reservation.ends_at - timedelta(hours=20, minutes=10), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        operations.reservation_release(
            reservation=reservation, actor=make_staff(superuser=True), reason="Rack work"
        )
    assert stripe_refunds(payment) == [3200, 16133]
    with time_machine.travel(reservation.ends_at, tick=False):
        code, out = check_books()
    assert (code, out.splitlines()) == (
        0,
        [
            "check_books: the books agree with Stripe; checked 1 organization, 1 payment, "
            "2 refunds, 0 invoices with Stripe and 1 reservation; 0 left for the next run "
            "(too recent); 0 new finance flags"
        ],
    )


def test_the_ledger_books_an_sla_credit_note_once(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation, invoice = invoiced(organization, owner, catalog)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=100))
    credit = SlaCredit.objects.get()
    with pytest.raises(IntegrityError), transaction.atomic():
        LedgerEntry.objects.create(
            organization=organization,
            kind="credit",
            amount=Decimal("-32.00"),
            currency="usd",
            reservation=reservation,
            invoice=invoice,
            sla_credit=credit,
            description="again",
        )
