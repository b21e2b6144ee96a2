"""Finance in the back office: refunds, webhook replays, flags, read-only money records."""

from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from backoffice.roles import FINANCE, OPERATIONS, SALES
from billing import gateway, webhooks
from billing.gateway import GatewayUnavailable
from billing.models import (
    BillingAccount,
    FinanceFlag,
    Invoice,
    LedgerEntry,
    ModelPrice,
    Payment,
    Refund,
    UsageHour,
    WebhookEvent,
    WebhookProcessing,
)
from billing.services import flags, payments, refunds, settlement
from capacity.models import Reservation
from core.dates import format_datetime
from core.errors import Conflict, NotAllowed, ServiceError
from core.models import AuditEvent
from tests.billing.conftest import (  # noqa: F401
    DECLINED,
    card,
    catalog,
    event,
    held_reservation,
    localstripe_url,
    signed,
    stripe_api,
    stripe_charges,
)
from tests.factories import OrganizationFactory

from .conftest import make_staff, verified_client

pytestmark = pytest.mark.django_db
NOT_FINANCE = (SALES, OPERATIONS)


def paid(organization, owner, catalog, api, **kwargs) -> Payment:
    """A reservation paid by card ($768.00: 2 H100 nodes for 24 hours at $2.00)."""
    reservation = held_reservation(organization, owner, catalog, **kwargs)
    payment = payments.payment_by_card_create(
        reservation=reservation,
        actor=owner,
        payment_method_id=card(api),
        attempt_token=f"attempt-{reservation.pk}",
    )
    payment.refresh_from_db()
    assert (payment.status, payment.amount) == ("succeeded", Decimal("768.00"))
    return payment


def ledger(organization) -> list[tuple[str, Decimal]]:
    return sorted(
        LedgerEntry.objects.filter(organization=organization).values_list("kind", "amount")
    )


def stripe_refunds(payment: Payment) -> list[tuple[int, str]]:
    return [
        (r.amount, r.metadata.to_dict().get("refund"))
        for r in gateway.refunds_list(payment_intent_id=payment.stripe_payment_intent_id)
    ]


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def refund_url(payment: Payment) -> str:
    return reverse("admin:billing_payment_refund", args=[payment.pk])


PAID_LEDGER = [("charge", Decimal("768.00")), ("payment", Decimal("-768.00"))]


# --- Refunding one payment ----------------------------------------------------------------------
def test_finance_refunds_part_of_a_payment_after_confirming(
    catalog, organization, owner, stripe_api
):
    payment = paid(organization, owner, catalog, stripe_api)
    finance_user = make_staff(FINANCE, email="fin@example.com")
    client = verified_client(finance_user)

    change = client.get(reverse("admin:billing_payment_change", args=[payment.pk]))
    assert change.status_code == 200
    assert f'href="{refund_url(payment)}"' in change.content.decode()

    page = client.get(refund_url(payment))
    assert page.status_code == 200
    assert page.context["form"]["amount"].value() == Decimal("768.00")
    assert (page.context["paid"], page.context["refunded"], page.context["refundable"]) == (
        "$768.00",
        "$0.00",
        "$768.00",
    )

    review = client.post(refund_url(payment), {"amount": "500.00", "reason": "Node outage"})
    assert review.status_code == 200
    assert review.context["confirming"] is True
    assert "Yes, refund $500.00" in review.content.decode()
    assert Refund.objects.count() == 0  # reviewing changes nothing

    done = client.post(
        refund_url(payment), {"amount": "500.00", "reason": "Node outage", "confirm": "yes"}
    )
    assert done.status_code == 302
    assert done["Location"] == reverse("admin:billing_payment_change", args=[payment.pk])
    refund = Refund.objects.get()
    assert texts(done) == [f"Refunded $500.00 of {payment.public_id} ({refund.public_id})."]
    assert (refund.amount, refund.status, refund.reason, refund.created_by) == (
        Decimal("500.00"),
        "succeeded",
        "Node outage",
        finance_user,
    )
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("500.00")
    assert ledger(organization) == [
        ("charge", Decimal("768.00")),
        ("credit", Decimal("-500.00")),
        ("payment", Decimal("-768.00")),
        ("refund", Decimal("500.00")),
    ]
    assert stripe_refunds(payment) == [(50000, refund.public_id)]
    events = AuditEvent.objects.filter(action__startswith="refund.").order_by("id")
    assert [
        (e.action, e.actor, e.actor_kind, e.organization, e.object_id, e.data, e.reason)
        for e in events
    ] == [
        (
            "refund.requested",
            finance_user,
            "staff",
            organization,
            str(refund.pk),
            {"payment": payment.public_id, "amount": "500.00", "currency": "usd"},
            "Node outage",
        ),
        (
            "refund.succeeded",
            finance_user,
            "staff",
            organization,
            str(refund.pk),
            {"amount": "500.00", "payment": payment.public_id},
            "Node outage",
        ),
    ]
    # What is left is what the form offers next time.
    again = client.get(refund_url(payment))
    assert (again.context["refunded"], again.context["refundable"]) == ("$500.00", "$268.00")
    assert again.context["form"]["amount"].value() == Decimal("268.00")


@pytest.mark.parametrize(
    ("amount", "reason", "field", "message"),
    [
        ("768.01", "Goodwill", "amount", "At most $768.00 can still be refunded on this payment."),
        ("1000", "Goodwill", "amount", "At most $768.00 can still be refunded on this payment."),
        ("0", "Goodwill", "amount", "Refund an amount above zero."),
        ("0.00", "Goodwill", "amount", "Refund an amount above zero."),
        ("-5.00", "Goodwill", "amount", "Refund an amount above zero."),
        ("NaN", "Goodwill", "amount", "Refund an amount above zero."),
        ("10.005", "Goodwill", "amount", "USD amounts have at most 2 decimal places."),
        ("1e30", "Goodwill", "amount", "At most $768.00 can still be refunded on this payment."),
        ("1e-30", "Goodwill", "amount", "USD amounts have at most 2 decimal places."),
        ("ten", "Goodwill", "amount", "Enter the amount as a number, like 120.00."),
        ("", "Goodwill", "amount", "This field is required."),
        ("100.00", "", "reason", "Say why the money goes back; the reason is kept."),
        ("100.00", "   ", "reason", "Say why the money goes back; the reason is kept."),
        ("100.00", "x" * 501, "reason", "Keep the reason to 500 characters or fewer."),
    ],
)
@pytest.mark.parametrize("confirm", [False, True], ids=["review", "skipping-review"])
def test_bad_refunds_are_refused_with_a_clear_message_and_change_nothing(
    catalog, organization, owner, stripe_api, amount, reason, field, message, confirm
):
    payment = paid(organization, owner, catalog, stripe_api)
    audit_before = AuditEvent.objects.count()
    client = verified_client(make_staff(FINANCE))
    data = {"amount": amount, "reason": reason, **({"confirm": "yes"} if confirm else {})}
    response = client.post(refund_url(payment), data)
    assert response.status_code == 200
    assert response.context["confirming"] is False
    assert response.context["form"].errors == {field: [message]}
    assert Refund.objects.count() == 0
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("0.00")
    assert ledger(organization) == PAID_LEDGER
    assert stripe_refunds(payment) == []
    assert AuditEvent.objects.count() == audit_before


def test_more_than_is_left_after_earlier_refunds_is_refused(
    catalog, organization, owner, stripe_api
):
    payment = paid(organization, owner, catalog, stripe_api)
    staff = make_staff(FINANCE)
    refunds.staff_refund_issue(
        payment=payment, amount=Decimal("500.00"), reason="Part", actor=staff
    )
    payment.refresh_from_db()
    with pytest.raises(ServiceError) as refused:
        refunds.staff_refund_issue(
            payment=payment, amount=Decimal("268.01"), reason="Too much", actor=staff
        )
    assert (refused.value.message, refused.value.param) == (
        "At most $268.00 can still be refunded on this payment.",
        "amount",
    )
    # A refund still on its way to Stripe counts against what is left.
    Refund.objects.create(
        payment=payment, amount=Decimal("200.00"), currency="usd", reason="In flight"
    )
    with pytest.raises(ServiceError, match=r"^At most \$68.00 can still be refunded"):
        refunds.staff_refund_issue(
            payment=payment, amount=Decimal("68.01"), reason="Too much", actor=staff
        )
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("500.00")
    assert stripe_refunds(payment) == [(50000, Refund.objects.get(reason="Part").public_id)]


def test_a_payment_that_did_not_succeed_cannot_be_refunded(
    catalog, organization, owner, stripe_api
):
    reservation = held_reservation(organization, owner, catalog)
    with pytest.raises(gateway.PaymentError):
        payments.payment_by_card_create(
            reservation=reservation,
            actor=owner,
            payment_method_id=card(stripe_api, DECLINED),
            attempt_token="declined",
        )
    payment = Payment.objects.get()
    client = verified_client(make_staff(FINANCE))
    change = client.get(reverse("admin:billing_payment_change", args=[payment.pk]))
    assert refund_url(payment) not in change.content.decode()  # no button
    page = client.get(refund_url(payment))
    assert "Only a successful payment can be refunded; this one is failed." in (
        page.content.decode()
    )
    response = client.post(
        refund_url(payment), {"amount": "768.00", "reason": "x", "confirm": "yes"}
    )
    assert response.context["form"].errors == {
        "__all__": ["Only a successful payment can be refunded; this one is failed."]
    }
    assert Refund.objects.count() == 0


def test_a_refund_stripe_refuses_is_marked_failed_with_the_message(
    catalog, organization, owner, stripe_api
):
    """Stripe refuses the refund: it is kept as failed with Stripe's message, nothing is
    booked. (localstripe accepts over-refunds, so here Stripe no longer knows the payment.)"""
    payment = paid(organization, owner, catalog, stripe_api)
    requests.delete(f"{stripe_api}/_config/data", timeout=10).raise_for_status()
    staff = make_staff(FINANCE)
    client = verified_client(staff)
    response = client.post(
        refund_url(payment), {"amount": "100.00", "reason": "Goodwill", "confirm": "yes"}
    )
    assert response.status_code == 302
    refund = Refund.objects.get()
    assert texts(response) == [
        f"Stripe refused the refund: {refund.failure_message} It is marked failed."
    ]
    assert (refund.status, refund.failure_message) == (
        "failed",
        "The payment could not be processed.",
    )
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("0.00")
    assert ledger(organization) == PAID_LEDGER
    # A failed refund does not count against what is left: finance may try again.
    assert refunds.refund_position_for_payment(payment).refundable == Decimal("768.00")
    assert list(
        AuditEvent.objects.filter(action="refund.failed").values_list("actor", "data", "reason")
    ) == [
        (
            staff.pk,
            {"payment": payment.public_id, "message": "The payment could not be processed."},
            "Goodwill",
        )
    ]


def test_a_refund_that_cannot_reach_stripe_stays_pending_for_the_sweep(
    catalog, organization, owner, stripe_api, settings
):
    payment = paid(organization, owner, catalog, stripe_api)
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    client = verified_client(make_staff(FINANCE))
    response = client.post(
        refund_url(payment), {"amount": "100.00", "reason": "Goodwill", "confirm": "yes"}
    )
    assert texts(response) == [
        "Stripe could not be reached; the refund is saved as pending and is sent again "
        "automatically."
    ]
    # A second try while it is pending cannot pay out twice: the pending refund counts.
    again = client.post(
        refund_url(payment), {"amount": "668.01", "reason": "Goodwill", "confirm": "yes"}
    )
    assert again.context["form"].errors == {
        "amount": ["At most $668.00 can still be refunded on this payment."]
    }
    assert list(Refund.objects.values_list("amount", "status")) == [(Decimal("100.00"), "pending")]
    settings.STRIPE_API_BASE = stripe_api
    settlement.reservation_settle(reservation_id=payment.reservation_id)
    assert list(Refund.objects.values_list("amount", "status")) == [
        (Decimal("100.00"), "succeeded")
    ]
    assert stripe_refunds(payment) == [(10000, Refund.objects.get().public_id)]


@pytest.mark.parametrize("group", NOT_FINANCE)
def test_only_finance_refunds(catalog, organization, owner, stripe_api, group):
    payment = paid(organization, owner, catalog, stripe_api)
    user = make_staff(group)
    client = verified_client(user)
    assert client.get(refund_url(payment)).status_code == 403
    data = {"amount": "100.00", "reason": "x", "confirm": "yes"}
    assert client.post(refund_url(payment), data).status_code == 403
    changelist = client.get(reverse("admin:billing_payment_changelist"))
    if group == SALES:  # sales sees payments, without the refund action or button
        assert changelist.status_code == 200
        assert "refund_in_full" not in changelist.content.decode()
        change = client.get(reverse("admin:billing_payment_change", args=[payment.pk]))
        assert refund_url(payment) not in change.content.decode()
    else:
        assert changelist.status_code == 403
    client.post(
        reverse("admin:billing_payment_changelist"),
        {"action": "refund_in_full", "_selected_action": [payment.pk], "confirm": "yes", **data},
    )
    with pytest.raises(NotAllowed, match="^Only finance staff can refund payments.$"):
        refunds.staff_refund_issue(payment=payment, amount=Decimal("1.00"), reason="x", actor=user)
    assert Refund.objects.count() == 0
    payment.refresh_from_db()
    assert payment.amount_refunded == Decimal("0.00")
    assert ledger(organization) == PAID_LEDGER
    assert stripe_refunds(payment) == []
    assert not AuditEvent.objects.filter(action__startswith="refund.").exists()


# --- Refunding several payments in full ---------------------------------------------------------
def test_refund_in_full_confirms_then_reports_each_payment_that_failed(
    catalog, organization, owner, stripe_api
):
    whole = paid(organization, owner, catalog, stripe_api)
    part = paid(organization, owner, catalog, stripe_api)
    done = paid(organization, owner, catalog, stripe_api)
    staff = make_staff(FINANCE)
    refunds.staff_refund_issue(payment=part, amount=Decimal("68.00"), reason="Part", actor=staff)
    refunds.staff_refund_issue(payment=done, amount=Decimal("768.00"), reason="All", actor=staff)
    declined = held_reservation(organization, owner, catalog)
    with pytest.raises(gateway.PaymentError):
        payments.payment_by_card_create(
            reservation=declined,
            actor=owner,
            payment_method_id=card(stripe_api, DECLINED),
            attempt_token="declined",
        )
    failed = Payment.objects.get(status="failed")
    selected = [whole.pk, part.pk, done.pk, failed.pk]
    client = verified_client(staff)
    url = reverse("admin:billing_payment_changelist")
    action = {"action": "refund_in_full", "_selected_action": selected}

    confirm = client.post(url, action)
    assert confirm.status_code == 200
    assert confirm.context["rows"] == [
        [whole.public_id, organization.name, "Paid", "$768.00", "$0.00", "$768.00"],
        [part.public_id, organization.name, "Paid", "$768.00", "$68.00", "$700.00"],
        [done.public_id, organization.name, "Paid", "$768.00", "$768.00", "$0.00"],
        [failed.public_id, organization.name, "Failed", "$768.00", "$0.00", "cannot be refunded"],
    ]
    assert Refund.objects.count() == 2

    no_reason = client.post(url, {**action, "confirm": "yes", "reason": " "})
    assert no_reason.context["form"].errors == {
        "reason": ["Say why the money goes back; the reason is kept."]
    }
    assert Refund.objects.count() == 2

    response = client.post(url, {**action, "confirm": "yes", "reason": "Cluster lost"})
    assert response.status_code == 302
    assert texts(response) == [
        f"Refunded 2: {whole.public_id} ($768.00), {part.public_id} ($700.00).",
        f"{done.public_id}: Nothing is left to refund.",
        f"{failed.public_id}: Only a successful payment can be refunded; this one is failed.",
    ]
    assert sorted(
        Refund.objects.filter(reason="Cluster lost").values_list("payment__public_id", "amount")
    ) == sorted([(whole.public_id, Decimal("768.00")), (part.public_id, Decimal("700.00"))])
    assert set(
        Payment.objects.filter(status="succeeded").values_list("amount_refunded", flat=True)
    ) == {Decimal("768.00")}


# --- Webhook events -----------------------------------------------------------------------------
def _deliver(client, payload) -> WebhookEvent:
    body, signature = signed(payload)
    response = client.post(
        "/stripe/webhook/", data=body, content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )  # fmt: skip
    assert response.status_code == 200
    return WebhookEvent.objects.get(stripe_event_id=payload["id"])


def test_replaying_an_applied_event_changes_nothing(
    catalog, organization, owner, stripe_api, client, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    payment = stripe_charges(reservation, card(stripe_api))
    with django_capture_on_commit_callbacks(execute=True):
        stored = _deliver(
            client, event("evt_paid", "payment_intent.succeeded", payment.stripe_payment_intent_id)
        )
    assert (stored.processing.status, stored.processing.attempts) == ("processed", 1)
    others = AuditEvent.objects.exclude(action__startswith="webhook")
    before = (ledger(organization), others.count())

    staff = make_staff(FINANCE)
    admin = verified_client(staff)
    url = reverse("admin:billing_webhookevent_changelist")
    confirm = admin.post(url, {"action": "replay", "_selected_action": [stored.pk]})
    assert confirm.status_code == 200
    assert confirm.context["rows"] == [
        ["evt_paid", "payment_intent.succeeded", payment.stripe_payment_intent_id, "Processed", 1]
    ]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin.post(
            url, {"action": "replay", "_selected_action": [stored.pk], "confirm": "yes"}
        )
    assert len(callbacks) == 1
    assert texts(response) == ["Queued for processing again 1: evt_paid."]
    processing = WebhookProcessing.objects.get()
    assert (processing.status, processing.attempts) == ("processed", 2)
    payment.refresh_from_db()
    reservation.refresh_from_db()
    assert (payment.status, reservation.state) == ("succeeded", "scheduled")
    after = (ledger(organization), others.count())
    assert after == before
    assert list(
        AuditEvent.objects.filter(action="webhook_event.replayed").values_list(
            "actor", "actor_kind", "object_id", "data"
        )
    ) == [
        (
            staff.pk,
            "staff",
            str(stored.pk),
            {
                "event": "evt_paid",
                "type": "payment_intent.succeeded",
                "status_before": "processed",
                "attempts_before": 1,
            },
        )
    ]


def test_a_replay_finishes_an_event_that_could_not_be_processed(
    catalog, organization, owner, stripe_api, client, settings, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    payment = stripe_charges(reservation, card(stripe_api))
    stored = _deliver(
        client, event("evt_late", "payment_intent.succeeded", payment.stripe_payment_intent_id)
    )
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # Stripe unreachable while processing
    with pytest.raises(GatewayUnavailable):
        webhooks.webhook_process(stored.pk)
    settings.STRIPE_API_BASE = stripe_api
    processing = WebhookProcessing.objects.get()
    assert (processing.status, processing.attempts) == ("pending", 1)

    admin = verified_client(make_staff(FINANCE))
    change = admin.get(reverse("admin:billing_webhookevent_change", args=[stored.pk]))
    replay_url = reverse("admin:billing_webhookevent_replay", args=[stored.pk])
    assert f'href="{replay_url}"' in change.content.decode()
    assert "The payment provider is not reachable right now." in change.content.decode()
    page = admin.get(replay_url)
    assert page.context["rows"] == [
        ["evt_late", "payment_intent.succeeded", payment.stripe_payment_intent_id, "Pending", 1]
    ]
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(replay_url, {"confirm": "yes"})
    assert response["Location"] == reverse("admin:billing_webhookevent_change", args=[stored.pk])
    processing.refresh_from_db()
    assert (processing.status, processing.attempts, processing.last_error) == ("processed", 2, "")
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert ledger(organization) == PAID_LEDGER


@pytest.mark.parametrize("group", NOT_FINANCE)
def test_only_finance_replays(stripe_api, client, group, django_capture_on_commit_callbacks):
    stored = _deliver(client, event("evt_x", "customer.created", "cus_1", "customer"))
    user = make_staff(group)
    admin = verified_client(user)
    replay_url = reverse("admin:billing_webhookevent_replay", args=[stored.pk])
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert admin.get(replay_url).status_code == 403
        assert admin.post(replay_url, {"confirm": "yes"}).status_code == 403
        changelist = reverse("admin:billing_webhookevent_changelist")
        assert admin.get(changelist).status_code == 403
        admin.post(
            changelist, {"action": "replay", "_selected_action": [stored.pk], "confirm": "yes"}
        )
    with pytest.raises(NotAllowed, match="^Only finance staff can replay webhook events.$"):
        webhooks.webhook_replay(event=stored, actor=user)
    assert callbacks == []
    assert WebhookProcessing.objects.count() == 0
    assert not AuditEvent.objects.filter(action="webhook_event.replayed").exists()


# --- Finance flags ------------------------------------------------------------------------------
def _flags(organization) -> tuple[FinanceFlag, FinanceFlag, FinanceFlag]:
    reconciliation = FinanceFlag.objects.create(
        kind=FinanceFlag.Kind.RECONCILIATION,
        organization=organization,
        stripe_object_id="pi_recon",
        detail="pay_x is paid here but unknown to Stripe.",
    )
    dispute = FinanceFlag.objects.create(
        kind=FinanceFlag.Kind.DISPUTE,
        organization=organization,
        stripe_object_id="dp_1",
        detail="Dispute dp_1 over $768.00: fraudulent.",
    )
    closed = FinanceFlag.objects.create(
        kind=FinanceFlag.Kind.INVOICE_FAILED,
        organization=organization,
        stripe_object_id="in_1",
        detail="Payment of invoice 0001 failed.",
        resolved_at=timezone.now() - timedelta(days=1),
        resolved_by=make_staff(FINANCE, email="earlier@example.com"),
        resolution="Paid by wire.",
    )
    return reconciliation, dispute, closed


def test_the_flag_list_shows_open_flags_unless_asked(organization):
    reconciliation, dispute, closed = _flags(organization)
    admin = verified_client(make_staff(FINANCE))
    url = reverse("admin:billing_financeflag_changelist")
    default = admin.get(url)
    assert list(default.context["cl"].result_list) == [dispute, reconciliation]
    page = default.content.decode()
    for text in ("Reconciliation difference", organization.name, "pi_recon", "unknown to Stripe"):
        assert text in page
    resolved = admin.get(url, {"state": "resolved"})
    assert list(resolved.context["cl"].result_list) == [closed]
    assert "Resolved by earlier@example.com" in resolved.content.decode()
    assert list(admin.get(url, {"state": "all"}).context["cl"].result_list) == [
        closed,
        dispute,
        reconciliation,
    ]
    assert list(
        admin.get(url, {"kind": "reconciliation", "state": "all"}).context["cl"].result_list
    ) == [reconciliation]


def test_finance_resolves_flags_with_a_resolution_and_hears_of_each_that_was_done(organization):
    reconciliation, dispute, closed = _flags(organization)
    staff = make_staff(FINANCE, email="fin@example.com")
    admin = verified_client(staff)
    url = reverse("admin:billing_financeflag_changelist") + "?state=all"
    action = {"action": "resolve", "_selected_action": [reconciliation.pk, closed.pk]}

    form = admin.post(url, action)
    assert form.status_code == 200
    assert [row[-1] for row in form.context["rows"]] == ["Open", "Already resolved"]
    empty = admin.post(url, {**action, "confirm": "yes", "resolution": "  "})
    assert empty.context["form"].errors == {
        "resolution": ["Say what was done about it; the resolution is kept."]
    }
    assert FinanceFlag.objects.filter(resolved_at__isnull=True).count() == 2

    response = admin.post(url, {**action, "confirm": "yes", "resolution": "Stripe fixed it."})
    assert texts(response) == [
        f"Resolved 1: {reconciliation}.",
        f"{closed}: Already resolved by earlier@example.com on "
        f"{format_datetime(closed.resolved_at)}.",
    ]
    reconciliation.refresh_from_db()
    assert (reconciliation.resolved_by, reconciliation.resolution) == (staff, "Stripe fixed it.")
    assert reconciliation.resolved_at is not None
    closed.refresh_from_db()
    assert closed.resolution == "Paid by wire."
    dispute.refresh_from_db()
    assert dispute.resolved_at is None
    assert list(
        AuditEvent.objects.filter(action="finance_flag.resolved").values_list(
            "actor", "organization", "object_id", "data", "reason"
        )
    ) == [
        (
            staff.pk,
            organization.pk,
            str(reconciliation.pk),
            {"kind": "reconciliation", "object": "pi_recon"},
            "Stripe fixed it.",
        )
    ]


def test_one_flag_is_resolved_from_its_page(organization):
    _, dispute, _ = _flags(organization)
    admin = verified_client(make_staff(FINANCE))
    resolve_url = reverse("admin:billing_financeflag_resolve", args=[dispute.pk])
    change = admin.get(reverse("admin:billing_financeflag_change", args=[dispute.pk]))
    assert f'href="{resolve_url}"' in change.content.decode()
    response = admin.post(resolve_url, {"resolution": "Evidence sent; won."})
    assert response["Location"] == reverse("admin:billing_financeflag_change", args=[dispute.pk])
    dispute.refresh_from_db()
    assert dispute.resolution == "Evidence sent; won."
    again = admin.get(reverse("admin:billing_financeflag_change", args=[dispute.pk]))
    assert resolve_url not in again.content.decode()  # nothing left to resolve
    with pytest.raises(Conflict, match="^Already resolved by "):
        flags.flag_resolve(flag=dispute, actor=make_staff(FINANCE), resolution="Twice")


@pytest.mark.parametrize("group", NOT_FINANCE)
def test_only_finance_resolves_flags(organization, group):
    _, dispute, _ = _flags(organization)
    user = make_staff(group)
    admin = verified_client(user)
    resolve_url = reverse("admin:billing_financeflag_resolve", args=[dispute.pk])
    assert admin.get(resolve_url).status_code == 403
    assert admin.post(resolve_url, {"resolution": "x"}).status_code == 403
    admin.post(
        reverse("admin:billing_financeflag_changelist"),
        {
            "action": "resolve",
            "_selected_action": [dispute.pk],
            "confirm": "yes",
            "resolution": "x",
        },
    )
    with pytest.raises(NotAllowed, match="^Only finance staff can resolve flags.$"):
        flags.flag_resolve(flag=dispute, actor=user, resolution="x")
    dispute.refresh_from_db()
    assert (dispute.resolved_at, dispute.resolution) == (None, "")
    assert not AuditEvent.objects.filter(action="finance_flag.resolved").exists()


# --- Nobody edits money records -----------------------------------------------------------------
def _money_rows(organization) -> dict[str, object]:
    event_row = WebhookEvent.objects.create(
        stripe_event_id="evt_ro", type="customer.created", object_id="cus_1", payload={"a": 1}
    )
    entry = LedgerEntry.objects.create(
        organization=organization,
        kind=LedgerEntry.Kind.CREDIT,
        amount=Decimal("-10.00"),
        currency="usd",
        description="Goodwill credit",
    )
    return {"webhookevent": event_row, "ledgerentry": entry}


@pytest.mark.parametrize("who", [FINANCE, SALES, "superuser"])
@pytest.mark.parametrize("model", ["ledgerentry", "webhookevent"])
def test_nobody_adds_changes_or_deletes_ledger_entries_or_webhook_events(organization, who, model):
    row = _money_rows(organization)[model]
    user = make_staff(superuser=True) if who == "superuser" else make_staff(who)
    admin = verified_client(user)
    change = reverse(f"admin:billing_{model}_change", args=[row.pk])
    delete = reverse(f"admin:billing_{model}_delete", args=[row.pk])
    add = reverse(f"admin:billing_{model}_add")
    edit = {"description": "Changed", "amount": "-99.00", "type": "changed", "payload": "{}"}
    assert admin.post(change, edit).status_code == 403
    assert admin.post(delete, {"post": "yes"}).status_code == 403
    assert admin.post(add, edit).status_code == 403
    bulk_delete = admin.post(
        reverse(f"admin:billing_{model}_changelist"),
        {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"},
    )
    # No delete action is offered: the list shows again (or a bad-action redirect where the
    # list has actions); Sales does not see webhook events at all.
    expected = {"ledgerentry": 200, "webhookevent": 403 if who == SALES else 302}[model]
    assert bulk_delete.status_code == expected
    assert type(row).objects.count() == 1
    fresh = type(row).objects.get()
    if model == "ledgerentry":
        assert (fresh.description, fresh.amount) == ("Goodwill credit", Decimal("-10.00"))
    else:
        assert (fresh.type, fresh.payload) == ("customer.created", {"a": 1})


# --- Model prices -------------------------------------------------------------------------------
def test_finance_sets_model_prices_and_the_change_is_audited():
    price = ModelPrice.objects.create(
        model="llama-70b", input_per_million=Decimal("0.5000"), output_per_million=Decimal("1.5")
    )
    staff = make_staff(FINANCE)
    admin = verified_client(staff)
    response = admin.post(
        reverse("admin:billing_modelprice_change", args=[price.pk]),
        {
            "model": "llama-70b",
            "input_per_million": "0.6000",
            "output_per_million": "1.5000",
            "currency": "usd",
        },
    )
    assert response.status_code == 302
    price.refresh_from_db()
    assert price.input_per_million == Decimal("0.6000")
    assert list(
        AuditEvent.objects.filter(action="model_price.changed").values_list("actor", "data")
    ) == [(staff.pk, {"changes": {"input_per_million": ["0.5000", "0.6000"]}})]
    sales = verified_client(make_staff(SALES))
    assert sales.post(
        reverse("admin:billing_modelprice_change", args=[price.pk]),
        {"model": "x", "input_per_million": "9", "output_per_million": "9", "currency": "usd"},
    ).status_code == 403  # fmt: skip
    price.refresh_from_db()
    assert (price.model, price.input_per_million) == ("llama-70b", Decimal("0.6000"))


# --- Search and filters -------------------------------------------------------------------------
def test_ids_are_found_by_exact_lookups(catalog, organization, owner, stripe_api):
    payment = paid(organization, owner, catalog, stripe_api)
    other = paid(organization, owner, catalog, stripe_api)
    admin = verified_client(make_staff(FINANCE))
    url = reverse("admin:billing_payment_changelist")
    ids = (payment.public_id, payment.stripe_payment_intent_id, payment.reservation.public_id)
    for term in ids:
        found = admin.get(url, {"q": f" {term} "})
        assert list(found.context["cl"].result_list) == [payment]
    assert list(admin.get(url, {"q": payment.public_id[:-1]}).context["cl"].result_list) == []
    by_name = admin.get(url, {"q": organization.name[:4]})
    assert list(by_name.context["cl"].result_list) == [other, payment]
    only_org = admin.get(url, {"organization__id__exact": organization.pk})
    assert only_org.status_code == 200
    assert len(only_org.context["cl"].result_list) == 2


# --- Change lists stay flat as rows grow --------------------------------------------------------
def _reservations(organization, catalog, count: int) -> list[Reservation]:
    start = timezone.now().replace(minute=0, second=0, microsecond=0)
    return Reservation.objects.bulk_create(
        Reservation(
            organization=organization,
            gpu_model=catalog.h100,
            region=catalog.east,
            cluster=catalog.east_a,
            node_count=1,
            starts_at=start + timedelta(days=i),
            ends_at=start + timedelta(days=i, hours=1),
            state=Reservation.State.COMPLETED,
            currency="usd",
            price_per_gpu_hour=Decimal("2.0000"),
            price_source="list",
            subtotal=Decimal("16.00"),
            discount=Decimal("0.00"),
            total=Decimal("16.00"),
            public_id=f"rsv_q{organization.pk}x{i}",
        )
        for i in range(count)
    )


def _rows(count: int, catalog, staff) -> None:
    """`count` rows of every finance model, each in its own organization."""
    orgs = [OrganizationFactory() for _ in range(count)]
    for org in orgs:
        (reservation,) = _reservations(org, catalog, 1)
        BillingAccount.objects.create(organization=org, stripe_customer_id=f"cus_{org.pk}")
        payment = Payment.objects.create(
            organization=org,
            reservation=reservation,
            attempt_token="a",
            amount=Decimal("16.00"),
            currency="usd",
            status="succeeded",
            flagged=True,
        )
        Refund.objects.create(
            payment=payment, amount=Decimal("1.00"), currency="usd", reason="r", created_by=staff
        )
        Invoice.objects.create(
            organization=org, reservation=reservation, amount=Decimal("16.00"), currency="usd"
        )
        LedgerEntry.objects.create(
            organization=org,
            kind="charge",
            amount=Decimal("16.00"),
            currency="usd",
            description="d",
            reservation=reservation,
            payment=payment,
        )
        stored = WebhookEvent.objects.create(
            stripe_event_id=f"evt_{org.pk}", type="x", object_id=f"pi_{org.pk}", payload={}
        )
        if org.pk % 2:
            WebhookProcessing.objects.create(event=stored, status="processed", attempts=1)
        FinanceFlag.objects.create(
            kind="reconciliation",
            organization=org,
            payment=payment,
            stripe_object_id=f"pi_{org.pk}",
            detail="d",
            resolved_by=staff if org.pk % 2 else None,
            resolved_at=timezone.now() if org.pk % 2 else None,
        )
        UsageHour.objects.create(organization=org, model="m", hour=timezone.now())
        ModelPrice.objects.create(
            model=f"m{org.pk}", input_per_million=Decimal(1), output_per_million=Decimal(1)
        )


CHANGELISTS = [
    "billingaccount",
    "payment",
    "refund",
    "invoice",
    "ledgerentry",
    "webhookevent",
    "financeflag",
    "modelprice",
    "usagehour",
]


def _queries(admin, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert admin.get(url).status_code == 200
    return len(queries)


def test_change_lists_make_the_same_queries_for_3_rows_and_30(catalog):
    staff = make_staff(FINANCE)
    admin = verified_client(staff)
    urls = [reverse(f"admin:billing_{name}_changelist") for name in CHANGELISTS]
    urls.append(reverse("admin:billing_financeflag_changelist") + "?state=all")
    _rows(3, catalog, staff)
    small = {url: _queries(admin, url) for url in urls}
    _rows(27, catalog, staff)
    large = {url: _queries(admin, url) for url in urls}
    assert large == small
    assert Payment.objects.count() == 30
