import random
import time
from decimal import Decimal

import pytest
import requests
import time_machine
from django.urls import reverse

from billing import gateway
from billing.models import (
    FinanceFlag,
    LedgerEntry,
    Payment,
    Refund,
    WebhookEvent,
    WebhookProcessing,
)

from .conftest import (
    SECRET_KEY,
    WEBHOOK_SECRET,
    card,
    event,
    held_reservation,
    signed,
    stripe_charges,
)

URL = "/stripe/webhook/"
pytestmark = [pytest.mark.usefixtures("stripe_api"), pytest.mark.django_db]


def post(client, body: bytes, signature: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return client.post(URL, data=body, content_type="application/json", **headers)


def test_the_url_is_the_contracts():
    assert reverse("stripe-webhook") == URL


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: (signed(event("evt_1", "payment_intent.succeeded", "pi_1"))[0], None),
            "Missing Stripe-Signature header.",
        ),
        (
            lambda: (signed(event("evt_1", "payment_intent.succeeded", "pi_1"))[0], "t=1,v1=00"),
            "Invalid signature.",
        ),
        (
            lambda: signed(
                event("evt_1", "payment_intent.succeeded", "pi_1"), secret="whsec_wrong"
            ),
            "Invalid signature.",
        ),
        (
            lambda: signed(
                event("evt_1", "payment_intent.succeeded", "pi_1"), timestamp=int(time.time()) - 301
            ),
            "Invalid signature.",
        ),
        (lambda: _tampered(), "Invalid signature."),
        (lambda: signed("{not json"), "The body is not valid JSON."),
        (lambda: signed({"object": "event", "type": "x"}), "The event has no id or type."),
        (
            lambda: signed({"id": "not-an-event", "type": "x", "data": {"object": {}}}),
            "The event id is not valid.",
        ),
    ],
)
def test_bad_deliveries_are_refused_and_nothing_is_stored(client, make, message):
    body, signature = make()
    response = post(client, body, signature)
    assert response.status_code == 400
    assert response.json() == {"error": message}
    assert WebhookEvent.objects.count() == 0


def _tampered():
    body, signature = signed(event("evt_1", "payment_intent.succeeded", "pi_1"))
    return body.replace(b"pi_1", b"pi_2"), signature


def test_an_event_is_stored_once_and_duplicates_are_acknowledged(
    client, django_capture_on_commit_callbacks
):
    body, signature = signed(event("evt_unknown_type", "customer.created", "cus_1", "customer"))
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, body, signature)
        second = post(client, body, signature)
    assert (first.status_code, first.json()) == (200, {"received": True, "duplicate": False})
    assert (second.status_code, second.json()) == (200, {"received": True, "duplicate": True})
    stored = WebhookEvent.objects.get()
    assert (stored.type, stored.object_id, stored.payload["id"]) == (
        "customer.created",
        "cus_1",
        "evt_unknown_type",
    )
    processing = WebhookProcessing.objects.get()
    assert (processing.status, processing.attempts) == ("ignored", 1)


def test_replays_in_any_order_apply_each_change_once(
    catalog, organization, owner, stripe_api, client, django_capture_on_commit_callbacks
):
    """Stripe charged the card and later refunded $100 from its dashboard; we hear of both
    only through webhooks, each delivered three times, shuffled with a stale event."""
    reservation = held_reservation(organization, owner, catalog)
    payment = stripe_charges(reservation, card(stripe_api))
    intent = payment.stripe_payment_intent_id
    charge = gateway.payment_intent_retrieve(intent).latest_charge
    charge_id = charge if isinstance(charge, str) else charge.id
    requests.post(
        f"{stripe_api}/v1/refunds",
        data={"payment_intent": intent, "amount": 10000},
        auth=(SECRET_KEY, ""),
        timeout=10,
    ).raise_for_status()
    deliveries = [
        signed(event("evt_paid", "payment_intent.succeeded", intent)),
        signed(event("evt_stale", "payment_intent.processing", intent)),
        signed(event("evt_refunded", "charge.refunded", charge_id, "charge")),
    ]
    shuffled = deliveries * 3
    random.Random(4).shuffle(shuffled)
    with django_capture_on_commit_callbacks(execute=True):
        for body, signature in shuffled:
            assert post(client, body, signature).status_code == 200
    assert WebhookEvent.objects.count() == 3
    assert set(WebhookProcessing.objects.values_list("status", "attempts")) == {("processed", 1)}
    payment.refresh_from_db()
    reservation.refresh_from_db()
    assert (payment.status, payment.amount_refunded, reservation.state) == (
        "succeeded",
        Decimal("100.00"),
        "scheduled",
    )
    assert sorted(LedgerEntry.objects.values_list("kind", "amount")) == [
        ("charge", Decimal("768.00")),
        ("credit", Decimal("-100.00")),
        ("payment", Decimal("-768.00")),
        ("refund", Decimal("100.00")),
    ]
    assert list(Refund.objects.values_list("amount", "status")) == [
        (Decimal("100.00"), "succeeded")
    ]


def test_a_webhook_can_be_the_one_that_confirms_the_payment(
    catalog, organization, owner, stripe_api, client, django_capture_on_commit_callbacks
):
    reservation = held_reservation(organization, owner, catalog)
    payment = stripe_charges(reservation, card(stripe_api))
    assert Payment.objects.get(pk=payment.pk).status == "pending"
    body, signature = signed(
        event("evt_pay", "payment_intent.succeeded", payment.stripe_payment_intent_id)
    )
    with django_capture_on_commit_callbacks(execute=True):
        post(client, body, signature)
    payment.refresh_from_db()
    reservation.refresh_from_db()
    assert (payment.status, reservation.state) == ("succeeded", "scheduled")
    assert sorted(LedgerEntry.objects.values_list("kind", flat=True)) == ["charge", "payment"]


def test_a_payment_we_do_not_know_is_flagged_for_finance(
    stripe_api, client, django_capture_on_commit_callbacks
):
    account_customer = gateway.customer_create(
        name="x", email="x@example.com", metadata={}, idempotency_key="u"
    )
    intent = gateway.payment_intent_create(
        amount_minor=1000,
        currency="usd",
        customer_id=account_customer.id,
        metadata={},
        idempotency_key="unknown",
        payment_method_id=card(stripe_api),
    )
    body, signature = signed(event("evt_u", "payment_intent.succeeded", intent.id))
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, body, signature).status_code == 200
    flag = FinanceFlag.objects.get()
    assert (flag.kind, flag.stripe_object_id) == ("unknown_payment", intent.id)
    assert WebhookProcessing.objects.get().status == "processed"


def test_webhook_secret_is_the_one_configured(settings, client):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_other"
    body, signature = signed(event("evt_s", "customer.created", "cus_1"), secret=WEBHOOK_SECRET)
    assert post(client, body, signature).status_code == 400


def test_events_that_missed_the_broker_are_processed_by_the_sweep(client):
    """The broker was down when the event came in: it is stored, and the sweep finds it."""
    from django.utils import timezone

    from billing.tasks import retry_webhooks

    body, signature = signed(event("evt_lost", "customer.updated", "cus_1", "customer"))
    assert post(client, body, signature).status_code == 200  # on-commit never ran in this test
    assert WebhookProcessing.objects.count() == 0
    assert retry_webhooks() == 0  # too fresh: its own task may still be on the way
    with time_machine.travel(timezone.now() + timezone.timedelta(minutes=3)):
        assert retry_webhooks() == 1
    assert WebhookProcessing.objects.get().status == "ignored"
    assert retry_webhooks() == 0


def test_a_broker_outage_loses_no_event(
    client, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    """The broker is down when Stripe calls: the event is stored and acknowledged all the
    same, and the sweep processes it once the broker is back."""
    from celery import Celery
    from django.utils import timezone

    from billing.tasks import retry_webhooks

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery would prefer it
    down = Celery("down", broker="redis://127.0.0.1:9/0", set_as_current=False)
    down.conf.update(
        task_publish_retry=False, broker_connection_timeout=1, broker_connection_retry=False
    )
    monkeypatch.setattr("core.tasks.current_app", down)
    body, signature = signed(event("evt_outage", "customer.updated", "cus_1", "customer"))
    with (
        time_machine.travel(timezone.now() - timezone.timedelta(minutes=5)),
        django_capture_on_commit_callbacks(execute=True) as sent,
    ):
        assert post(client, body, signature).status_code == 200
    assert len(sent) == 1  # the send was tried and failed on the dead broker
    assert "broker unavailable, billing.process_webhook_event left for the sweep" in caplog.text
    assert WebhookEvent.objects.filter(stripe_event_id="evt_outage").exists()
    assert WebhookProcessing.objects.count() == 0
    monkeypatch.undo()  # the broker is back
    assert retry_webhooks() == 1
    assert WebhookProcessing.objects.get().status == "ignored"
