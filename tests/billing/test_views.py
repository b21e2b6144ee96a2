import time
from decimal import Decimal

import pytest
import requests
from django.urls import reverse

from accounts.permissions import Role
from billing import gateway
from billing.models import Payment, WebhookEvent, WebhookProcessing
from billing.services import accounts, cards, payments
from capacity.models import Reservation
from tests.conftest import client_for, member_of

from .conftest import DECLINED, THREE_D_SECURE, WEBHOOK_SECRET, card, held_reservation

pytestmark = pytest.mark.usefixtures("stripe_api")


def url(name, org, *args):
    return reverse(name, args=[org.slug, *args])


def test_pay_page_offers_the_card_form_with_the_hold_countdown(catalog, organization, owner):
    reservation = held_reservation(organization, owner, catalog)
    page = client_for(owner).get(url("pay", organization, reservation.public_id))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-mode="payment"' in html
    # The card becomes a PaymentMethod in the browser; no SetupIntent is made to pay.
    assert 'data-mode="payment" data-client-secret=""' in html
    assert f'data-countdown="{reservation.hold_expires_at.isoformat()}"' in html
    assert "/js.stripe.com/v3/" in html
    assert "Pay $768.00" in html


def test_pay_card_endpoint_charges_and_answers_json(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    client = client_for(owner)
    answer = client.post(
        url("pay-card", organization, reservation.public_id),
        {"payment_method": card(stripe_api), "attempt": "t1", "make_default": "on"},
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "succeeded",
        "redirect": url("reservation-detail", organization, reservation.public_id),
    }
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.SCHEDULED
    account = accounts.billing_account_ensure(organization)
    assert cards.default_card_for_account(account).last4 == "4242"


def test_a_decline_answers_with_the_reason_and_a_fresh_attempt(
    catalog, organization, owner, stripe_api, caplog
):
    caplog.set_level("INFO", logger="billing.views")
    reservation = held_reservation(organization, owner, catalog)
    answer = client_for(owner).post(
        url("pay-card", organization, reservation.public_id),
        {"payment_method": card(stripe_api, DECLINED), "attempt": "t1"},
    )
    body = answer.json()
    assert answer.status_code == 402
    assert (body["error"], body["code"]) == ("Your card was declined.", "card_declined")
    assert "client_secret" not in body
    assert body["attempt"] != "t1"
    assert (
        f"card payment refused for {reservation.public_id}: Your card was declined. "
        "(code card_declined)" in caplog.text
    )


def test_three_d_secure_hands_the_secret_to_stripe_js(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    client = client_for(owner)
    answer = client.post(
        url("pay-card", organization, reservation.public_id),
        {"payment_method": card(stripe_api, THREE_D_SECURE), "attempt": "t1"},
    ).json()
    payment = Payment.objects.get()
    assert answer["status"] == "requires_action"
    assert answer["client_secret"].startswith(payment.stripe_payment_intent_id + "_secret_")
    # Coming back to the page later picks up where the bank left off.
    page = client.get(url("pay", organization, reservation.public_id))
    assert 'data-mode="action"' in page.content.decode()
    status = client.get(
        url("payment-status", organization, payment.public_id), HTTP_HX_REQUEST="true"
    )
    assert 'data-status="requires_action"' in status.content.decode()


def test_payment_status_redirects_once_paid(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)
    payment = payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(stripe_api), attempt_token="s"
    )
    status = client_for(owner).get(
        url("payment-status", organization, payment.public_id), HTTP_HX_REQUEST="true"
    )
    assert status["HX-Redirect"] == url("reservation-detail", organization, reservation.public_id)


def test_a_payment_refunded_because_it_came_too_late_says_so(
    catalog, organization, owner, stripe_api
):
    reservation = held_reservation(organization, owner, catalog)
    payment = payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(stripe_api), attempt_token="s"
    )
    Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.DUPLICATE)
    status = client_for(owner).get(
        url("payment-status", organization, payment.public_id), HTTP_HX_REQUEST="true"
    )
    text = " ".join(status.content.decode().split())
    assert 'data-status="duplicate"' in text
    assert "so all $768.00 of it is refunded to your card." in text
    assert "hx-trigger" not in text  # settled: the page stops asking
    assert "HX-Redirect" not in status


def test_billing_page_lists_payments_and_receipts_download(
    catalog, organization, owner, stripe_api
):
    payment = payments.payment_by_card_create(
        reservation=held_reservation(organization, owner, catalog),
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="b",
    )
    client = client_for(owner)
    page = client.get(url("billing", organization))
    assert page.status_code == 200
    assert payment.public_id in page.content.decode()
    assert page.context["balance"] == Decimal("0.00")
    receipt = client.get(url("receipt", organization, payment.public_id), {"download": "1"})
    assert (
        receipt["Content-Disposition"]
        == f'attachment; filename="hyperblock-receipt-{payment.public_id}.html"'
    )
    assert "Paid by Visa •••• 4242" in receipt.content.decode()


@pytest.mark.parametrize(
    ("role", "status"),
    [(Role.OWNER, 200), (Role.ADMIN, 200), (Role.BILLING, 200), (Role.MEMBER, 403)],
)
def test_who_sees_billing(organization, owner, role, status):
    user = owner if role == Role.OWNER else member_of(organization, role)
    assert client_for(user).get(url("billing", organization)).status_code == status


def test_cards_are_added_made_default_and_removed(organization, owner, stripe_api):
    client = client_for(owner, reauthenticated=True)
    account = accounts.billing_account_ensure(organization)
    first, second = card(stripe_api), card(stripe_api)
    for method in (first, second):
        gateway.payment_method_attach(
            payment_method_id=method, customer_id=account.stripe_customer_id, idempotency_key=method
        )
    client.post(url("card-default", organization, second))
    account.refresh_from_db()
    assert account.default_payment_method_id == second
    client.post(url("card-remove", organization, second))
    account.refresh_from_db()
    assert account.default_payment_method_id == ""
    assert [c.id for c in cards.cards_for_account(account)] == [first]


def test_another_organizations_billing_is_invisible_and_untouchable(
    catalog, organization, owner, other_organization, stripe_api
):
    theirs_owner = other_organization.memberships.get().user
    theirs = payments.payment_by_card_create(
        reservation=held_reservation(other_organization, theirs_owner, catalog),
        actor=theirs_owner,
        payment_method_id=card(stripe_api),
        attempt_token="o",
    )
    their_account = accounts.billing_account_ensure(other_organization)
    their_card = card(stripe_api)
    gateway.payment_method_attach(
        payment_method_id=their_card,
        customer_id=their_account.stripe_customer_id,
        idempotency_key="o2",
    )
    their_cards = [c.id for c in cards.cards_for_account(their_account)]
    assert their_card in their_cards
    client = client_for(owner, reauthenticated=True)
    assert client.get(url("receipt", organization, theirs.public_id)).status_code == 404
    assert client.get(url("payment-status", organization, theirs.public_id)).status_code == 404
    assert client.get(url("billing", other_organization)).status_code == 404
    assert client.get(url("pay", organization, theirs.reservation.public_id)).status_code == 404
    client.post(url("card-remove", organization, their_card))
    client.post(url("card-default", organization, their_card))
    assert [c.id for c in cards.cards_for_account(their_account)] == their_cards
    their_account.refresh_from_db()
    assert their_account.default_payment_method_id == ""


@pytest.mark.django_db(transaction=True)
def test_localstripe_delivers_a_signed_webhook_that_we_process(
    catalog, organization, owner, stripe_api, live_server
):
    requests.post(
        f"{stripe_api}/_config/webhooks/hyperblock",
        data={
            "url": f"{live_server.url}/stripe/webhook/",
            "secret": WEBHOOK_SECRET,
        },
        timeout=10,
    ).raise_for_status()
    reservation = held_reservation(organization, owner, catalog)
    payment = payments.payment_by_card_create(
        reservation=reservation,
        actor=owner,
        payment_method_id=card(stripe_api),
        attempt_token="live",
    )
    # localstripe sends the event about a second later; the live server stores it, then
    # processes it once the insert has committed.
    processed = WebhookProcessing.objects.filter(
        event__object_id=payment.stripe_payment_intent_id, status="processed"
    )
    deadline = time.monotonic() + 15
    while not processed.exists():
        assert time.monotonic() < deadline, (
            "payment_intent.succeeded was not delivered and processed"
        )
        time.sleep(0.2)
    delivered = WebhookEvent.objects.get(object_id=payment.stripe_payment_intent_id)
    assert delivered.type == "payment_intent.succeeded"
    assert Payment.objects.filter(status="succeeded").count() == 1


def test_dashboard_shows_this_months_spend_and_the_reservation(
    catalog, organization, owner, stripe_api
):
    reservation = held_reservation(organization, owner, catalog)
    payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(stripe_api), attempt_token="d"
    )
    page = client_for(owner).get(reverse("dashboard", args=[organization.slug]))
    assert page.context["spend_this_month"] == Decimal("768.00")
    assert page.context["counts"] == {"scheduled": 1}
    assert 'data-testid="spend">$768.00<' in page.content.decode()
    member_page = client_for(member_of(organization, Role.MEMBER)).get(
        reverse("dashboard", args=[organization.slug])
    )
    assert 'data-testid="spend"' not in member_page.content.decode()
