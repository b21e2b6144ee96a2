"""Extensions are quoted, held, paid, then applied: no hour is given away."""

from datetime import timedelta
from decimal import Decimal

import pytest
import requests
import time_machine
from django.test import Client
from django.utils import timezone

from accounts import api_keys, credit
from accounts.models import ApiKey
from billing import gateway, selectors, tasks
from billing.api import PaymentSerializer
from billing.models import FinanceFlag, Invoice, LedgerEntry, Payment, Refund
from billing.services import accounts, books, cards, extensions, payments, settlement
from capacity import extensions as capacity_extensions
from capacity import services as capacity_services
from capacity.models import Allocation, Extension, ListPrice, Reservation
from core.errors import Conflict
from core.models import AuditEvent
from tests.conftest import client_for

from .conftest import DECLINED, SECRET_KEY, card, event, held_reservation, signed
from .test_invoices_and_disputes import on_invoice_terms, stripe_invoices  # noqa: F401

pytestmark = pytest.mark.usefixtures("stripe_api")
HOUR = timedelta(hours=1)
# 2 nodes x 8 H100 at $2.00/GPU-h: 24 h is 768.00, each extra hour 32.00.
BLOCK, PER_HOUR = Decimal("768.00"), Decimal("32.00")


def paid_block(organization, owner, catalog, api: str) -> Reservation:
    reservation = held_reservation(organization, owner, catalog)
    payments.payment_by_card_create(
        reservation=reservation,
        actor=owner,
        payment_method_id=card(api),
        attempt_token="block",
    )
    reservation.refresh_from_db()
    assert (reservation.state, reservation.total) == ("scheduled", BLOCK)
    return reservation


def save_card(organization, owner, api: str, number: str = "4242424242424242") -> str:
    account = accounts.billing_account_ensure(organization)
    method = card(api, number)
    gateway.payment_method_attach(
        payment_method_id=method, customer_id=account.stripe_customer_id, idempotency_key=method
    )
    cards.card_make_default(organization=organization, actor=owner, payment_method_id=method)
    return method


def api_client(organization, owner) -> Client:
    key = api_keys.api_key_create(
        organization=organization,
        actor=owner,
        name="ci",
        scopes=[ApiKey.Scope.RESERVATIONS_READ, ApiKey.Scope.RESERVATIONS_WRITE],
    )[1]
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def extend_url(reservation: Reservation) -> str:
    return f"/api/v1/reservations/{reservation.public_id}/extend/"


def confirm_at_stripe(api: str, intent_id: str, number: str = "4242424242424242") -> None:
    """What Stripe.js does with the client secret: confirm the PaymentIntent with a card."""
    # localstripe's confirm takes no card: set it on the intent first, as Stripe.js would.
    for path, data in (("", {"payment_method": card(api, number)}), ("/confirm", {})):
        response = requests.post(
            f"{api}/v1/payment_intents/{intent_id}{path}",
            data=data,
            auth=(SECRET_KEY, ""),
            timeout=10,
        )
        response.raise_for_status()


def webhook(client: Client, intent_id: str, event_id: str) -> None:
    body, signature = signed(event(event_id, "payment_intent.succeeded", intent_id))
    response = client.post(
        "/stripe/webhook/", data=body, content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )  # fmt: skip
    assert response.status_code == 200


def live_windows(reservation: Reservation) -> list[tuple]:
    return sorted(
        Allocation.objects.filter(reservation=reservation, released_at__isnull=True).values_list(
            "node_id", "starts_at", "ends_at", "extension_id"
        )
    )


def succeeded(reservation: Reservation) -> Decimal:
    return sum(
        reservation.payments.filter(status="succeeded").values_list("amount", flat=True),
        Decimal("0.00"),
    )


def test_extension_moves_nothing_until_its_payment_succeeds(
    catalog, organization, owner, stripe_api, client, django_capture_on_commit_callbacks
):
    """The issue's path: paid 4 h... then extend by 20 h for free. Now it is held until paid."""
    reservation = paid_block(organization, owner, catalog, stripe_api)
    end = reservation.ends_at
    response = api_client(organization, owner).post(
        extend_url(reservation), {"hours": 20, "use_saved_card": False},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 202
    body = response.json()
    extension = Extension.objects.get()
    assert body["id"] == extension.public_id
    assert (body["state"], body["price"], body["currency"], body["hours"]) == (
        "held", "640.00", "usd", 20,
    )  # fmt: skip
    assert body["payment_intent"].startswith("pi_")
    assert body["client_secret"].startswith(body["payment_intent"] + "_secret_")
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total, succeeded(reservation)) == (end, BLOCK, BLOCK)
    shown = api_client(organization, owner).get(f"/api/v1/reservations/{reservation.public_id}/")
    assert (shown.json()["price"], shown.json()["pending_extension"]) == (
        "768.00",
        {
            "id": extension.public_id,
            "hours": 20,
            "ends_at": (end + 20 * HOUR).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "price": "640.00",
            "currency": "usd",
            "hold_expires_at": body["hold_expires_at"],
        },
    )
    assert reservation.price_lines[-1]["description"].startswith("2 × 8 H100 × 24 h")
    # The extra hours are held on the same nodes, beside the block's own allocations.
    nodes = {n for n, _, e, ext in live_windows(reservation) if ext is None}
    assert {(n, s, e) for n, s, e, ext in live_windows(reservation) if ext} == {
        (n, end, end + 20 * HOUR) for n in nodes
    }

    confirm_at_stripe(stripe_api, body["payment_intent"])
    reservation.refresh_from_db()
    assert reservation.ends_at == end  # Stripe took it; we have not heard yet
    with django_capture_on_commit_callbacks(execute=True):
        webhook(client, body["payment_intent"], "evt_ext_1")
    reservation.refresh_from_db()
    extension.refresh_from_db()
    assert extension.state == "paid"
    assert (reservation.ends_at, reservation.total) == (end + 20 * HOUR, BLOCK + Decimal("640.00"))
    assert succeeded(reservation) == reservation.total
    assert {e for _, _, e, ext in live_windows(reservation)} == {end + 20 * HOUR}
    assert all(ext is None for *_, ext in live_windows(reservation))
    assert sorted(LedgerEntry.objects.values_list("kind", "amount")) == [
        ("charge", Decimal("640.00")),
        ("charge", BLOCK),
        ("payment", -BLOCK),
        ("payment", Decimal("-640.00")),
    ]
    # The same event again (or a status check) changes nothing.
    with django_capture_on_commit_callbacks(execute=True):
        webhook(client, body["payment_intent"], "evt_ext_2")
    payments.payment_sync(payment_intent_id=body["payment_intent"])
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total) == (end + 20 * HOUR, BLOCK + Decimal("640.00"))
    assert LedgerEntry.objects.count() == 4


def test_saved_card_applies_the_extension_once_stripe_confirms(
    catalog, organization, owner, stripe_api
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    save_card(organization, owner, stripe_api)
    end = reservation.ends_at
    response = api_client(organization, owner).post(
        extend_url(reservation), {"hours": 3}, content_type="application/json"
    )
    assert response.status_code == 202
    body = response.json()
    assert (body["state"], body["price"], body["payment_status"]) == ("paid", "96.00", "succeeded")
    assert (body["payment_intent"], body["client_secret"], body["hold_expires_at"]) == (
        None, None, None,
    )  # fmt: skip
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total) == (end + 3 * HOUR, BLOCK + Decimal("96.00"))
    assert reservation.price_lines[-1] == {
        "description": "Extension by 3 h: 2 × 8 H100 × 3 h at $2.00/GPU-h",
        "amount": "96.00",
    }
    assert list(reservation.payments.order_by("id").values_list("amount", "status")) == [
        (BLOCK, "succeeded"),
        (Decimal("96.00"), "succeeded"),
    ]
    assert AuditEvent.objects.filter(action="reservation.extended").count() == 1
    # The extension's receipt is for the extension's hours only.
    payment = reservation.payments.get(extension__isnull=False)
    documents = [PaymentSerializer(p).data for p in reservation.payments.order_by("id")]
    assert [(d["amount"], d["extension"]) for d in documents] == [
        ("768.00", None),
        ("96.00", body["id"]),
    ]
    receipt = (
        client_for(owner)
        .get(f"/o/{organization.slug}/billing/receipts/{payment.public_id}/")
        .content.decode()
    )
    assert "2 × 8 H100 × 3 h at $2.00/GPU-h" in receipt
    assert "2 × 8 H100 × 24 h" not in receipt


def test_a_declined_saved_card_leaves_the_block_as_it_was_and_frees_the_hours(
    catalog, organization, owner, stripe_api
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    save_card(organization, owner, stripe_api, DECLINED)
    before = (reservation.ends_at, reservation.total, live_windows(reservation))
    response = api_client(organization, owner).post(
        extend_url(reservation), {"hours": 3}, content_type="application/json"
    )
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "card_declined"
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total, live_windows(reservation)) == before
    assert Extension.objects.get().state == "canceled"
    assert reservation.payments.filter(extension__isnull=False).get().status == "failed"
    quote = capacity_extensions.extension_quote(reservation=reservation, hours=3)
    assert quote.available is True


def test_an_unpaid_extension_lapses_and_frees_its_hours(
    catalog, organization, owner, stripe_api, client, django_capture_on_commit_callbacks
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=2, attempt_token="t",
        collect=extensions.PAYMENT_INTENT,
    )  # fmt: skip
    before = (reservation.ends_at, reservation.total)
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        assert capacity_services.lapsed_holds_expire() == 1
    started.extension.refresh_from_db()
    reservation.refresh_from_db()
    assert started.extension.state == "lapsed"
    assert (reservation.ends_at, reservation.total) == before
    assert not Allocation.objects.filter(extension__isnull=False, released_at__isnull=True)
    # The customer pays after all and the hours are still free: applied.
    confirm_at_stripe(stripe_api, started.payment.stripe_payment_intent_id)
    with django_capture_on_commit_callbacks(execute=True):
        webhook(client, started.payment.stripe_payment_intent_id, "evt_late")
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total) == (
        before[0] + 2 * HOUR, before[1] + Decimal("64.00"),
    )  # fmt: skip


def lapsed_extension(organization, owner, catalog, api: str) -> extensions.ExtensionStarted:
    """A paid block whose 2 h extension (64.00) was never paid before its hold lapsed."""
    reservation = paid_block(organization, owner, catalog, api)
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=2, attempt_token="t",
        collect=extensions.PAYMENT_INTENT,
    )  # fmt: skip
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        capacity_services.lapsed_holds_expire()
    started.extension.refresh_from_db()
    assert started.extension.state == "lapsed"
    return started


def ledger() -> list[tuple[str, Decimal]]:
    return sorted(LedgerEntry.objects.values_list("kind", "amount"))


def books_agree() -> None:
    assert books.books_check(grace=timedelta(0), raise_flags=False).differences == []


def test_a_late_payment_for_hours_taken_since_is_refunded_in_full(
    catalog, organization, owner, other_organization, stripe_api, client,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    started = lapsed_extension(organization, owner, catalog, stripe_api)
    reservation = started.extension.reservation
    # Someone else books all of the pool right after the block's end.
    theirs = other_organization.memberships.get().user
    for nodes in (4, 8):
        capacity_services.reservation_create(
            organization=other_organization, user=theirs, gpu_model=catalog.h100,
            region=catalog.east, node_count=nodes,
            window=capacity_services.Window(reservation.ends_at, reservation.ends_at + 4 * HOUR),
        )  # fmt: skip
    intent = started.payment.stripe_payment_intent_id
    confirm_at_stripe(stripe_api, intent)
    with django_capture_on_commit_callbacks(execute=True):
        webhook(client, intent, "evt_taken")
    reservation.refresh_from_db()
    payment = Payment.objects.get(pk=started.payment.pk)
    assert (reservation.ends_at, reservation.total) == (started.extension.starts_at, BLOCK)
    # Received for hours never applied: booked like a second payment, never charged.
    assert (payment.status, payment.amount_refunded) == ("duplicate", Decimal("64.00"))
    assert FinanceFlag.objects.get().kind == "late_payment_refunded"
    assert AuditEvent.objects.get(action="payment.not_applied").data == {
        "extension": started.extension.public_id
    }
    assert ledger() == [
        ("charge", BLOCK),
        ("payment", -BLOCK),
        ("payment", Decimal("-64.00")),
        ("refund", Decimal("64.00")),
    ]
    books_agree()


@pytest.mark.parametrize(
    ("per_gpu_hour", "applied", "refund"),
    [
        ("1.50", True, Decimal("16.00")),  # fell: 2 h now cost 48.00, the 16.00 paid over back
        ("2.00", True, None),  # the same price: applied, nothing back
        ("2.01", False, Decimal("64.00")),  # rose to 64.32: refused, refunded in full
    ],
)
def test_a_late_extension_payment_is_repriced(
    catalog, organization, owner, stripe_api, client, django_capture_on_commit_callbacks,
    per_gpu_hour, applied, refund,
):  # fmt: skip
    started = lapsed_extension(organization, owner, catalog, stripe_api)
    reservation = started.extension.reservation
    end = reservation.ends_at
    ListPrice.objects.filter(region=catalog.east).update(price_per_gpu_hour=Decimal(per_gpu_hour))
    intent = started.payment.stripe_payment_intent_id
    confirm_at_stripe(stripe_api, intent)
    with django_capture_on_commit_callbacks(execute=True):
        webhook(client, intent, "evt_late")
    reservation.refresh_from_db()
    started.extension.refresh_from_db()
    payment = Payment.objects.get(pk=started.payment.pk)
    paid = [("charge", BLOCK), ("payment", -BLOCK), ("payment", Decimal("-64.00"))]
    if applied:
        # The price paid stays the sale; what it paid beyond today's price is credited back.
        assert started.extension.state == "paid"
        assert (reservation.ends_at, reservation.total) == (end + 2 * HOUR, BLOCK + 64)
        assert (payment.status, payment.amount_refunded) == ("succeeded", refund or 0)
        back = [("credit", -refund), ("refund", refund)] if refund else []
        assert ledger() == sorted([*paid, ("charge", Decimal("64.00")), *back])
        assert not FinanceFlag.objects.exists()
        if refund:
            assert "cost $48.00 now" in Refund.objects.get().reason
    else:
        assert started.extension.state == "lapsed"
        assert (reservation.ends_at, reservation.total) == (end, BLOCK)
        assert (payment.status, payment.amount_refunded) == ("duplicate", refund)
        assert ledger() == sorted([*paid, ("refund", refund)])
        flag = FinanceFlag.objects.get()
        assert flag.kind == "late_payment_refunded"
        assert "now cost $64.32, more than was paid" in flag.detail
        assert not Allocation.objects.filter(extension__isnull=False, released_at__isnull=True)
    books_agree()


def test_the_quote_changes_nothing(catalog, organization, owner, stripe_api):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    counts = lambda: (  # noqa: E731
        Extension.objects.count(), Allocation.objects.count(), Payment.objects.count(),
        list(AuditEvent.objects.exclude(action__startswith="api_key.").values_list("action")),
    )  # fmt: skip
    before = counts()
    response = api_client(organization, owner).get(extend_url(reservation), {"hours": 5})
    assert response.status_code == 200
    assert response.json() == {
        "hours": 5,
        "starts_at": reservation.ends_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ends_at": (reservation.ends_at + 5 * HOUR).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "price": "160.00",
        "currency": "usd",
        "price_lines": [{"description": "2 × 8 H100 × 5 h at $2.00/GPU-h", "amount": "160.00"}],
        "available": True,
    }
    assert counts() == before


@pytest.mark.parametrize(
    ("hours", "param"),
    [(0, "hours"), (-3, "hours"), ("abc", "hours"), (1.5, "hours"), (182 * 24, "hours")],
)
def test_bad_hours_are_refused_and_change_nothing(
    catalog, organization, owner, stripe_api, hours, param
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    client = api_client(organization, owner)
    for response in (
        client.post(extend_url(reservation), {"hours": hours}, content_type="application/json"),
        client.get(extend_url(reservation), {"hours": hours}),
    ):
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
    reservation.refresh_from_db()
    assert (reservation.total, Extension.objects.count()) == (BLOCK, 0)


def test_a_second_extension_waits_for_the_first(catalog, organization, owner, stripe_api):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    client = api_client(organization, owner)
    first = client.post(
        extend_url(reservation), {"hours": 2, "use_saved_card": False},
        content_type="application/json",
    )  # fmt: skip
    second = client.post(
        extend_url(reservation), {"hours": 2, "use_saved_card": False},
        content_type="application/json",
    )  # fmt: skip
    assert first.status_code == 202
    assert (second.status_code, second.json()["error"]["code"]) == (409, "extension_pending")
    assert Allocation.objects.filter(extension__isnull=False).count() == 2  # 2 nodes, once
    # The same client token again is the same extension, not a refusal.
    again = client.post(
        extend_url(reservation), {"hours": 2, "client_token": "tok", "use_saved_card": False},
        content_type="application/json",
    )  # fmt: skip
    assert again.status_code == 409


def test_the_same_client_token_is_one_extension(catalog, organization, owner, stripe_api):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    client = api_client(organization, owner)
    body = {"hours": 2, "client_token": "tok-1", "use_saved_card": False}
    first = client.post(extend_url(reservation), body, content_type="application/json")
    again = client.post(extend_url(reservation), body, content_type="application/json")
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json() == again.json()
    assert Extension.objects.count() == 1


def test_paying_an_extension_twice_refunds_the_second(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=2, attempt_token="one",
        collect=extensions.PAY_PAGE,
    )  # fmt: skip
    extension = started.extension
    first, _ = payments.payment_intent_open(
        reservation=reservation, actor=owner, attempt_token="a", extension=extension
    )
    second, _ = payments.payment_intent_open(
        reservation=reservation, actor=owner, attempt_token="b", extension=extension
    )
    confirm_at_stripe(stripe_api, first.stripe_payment_intent_id)
    confirm_at_stripe(stripe_api, second.stripe_payment_intent_id)
    with django_capture_on_commit_callbacks(execute=True):
        payments.payment_sync(payment_intent_id=first.stripe_payment_intent_id)
        payments.payment_sync(payment_intent_id=second.stripe_payment_intent_id)
    reservation.refresh_from_db()
    assert reservation.total == BLOCK + Decimal("64.00")
    assert sorted(extension.payments.values_list("status", "amount_refunded")) == [
        ("duplicate", Decimal("64.00")),
        ("succeeded", Decimal("0.00")),
    ]
    # A paid extension takes no more payments.
    with pytest.raises(payments.Conflict, match="nothing to pay"):
        payments.payment_intent_open(
            reservation=reservation, actor=owner, attempt_token="c", extension=extension
        )


def test_canceled_blocks_and_invoice_terms_past_the_limit_are_refused(
    catalog, organization, owner, stripe_api
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    client = api_client(organization, owner)
    organization.payment_terms = "invoice"
    organization.save()  # credit limit 0: the extra hours do not fit
    response = client.post(extend_url(reservation), {"hours": 2}, content_type="application/json")
    assert (response.status_code, response.json()["error"]["code"]) == (
        409, "credit_limit_exceeded",
    )  # fmt: skip
    assert Allocation.objects.filter(extension__isnull=False).count() == 0
    organization.payment_terms = "card"
    organization.save()
    capacity_services.reservation_cancel(reservation=reservation, actor=owner)
    response = client.post(extend_url(reservation), {"hours": 2}, content_type="application/json")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "not_extendable")
    assert Extension.objects.count() == 0


def test_cancel_after_a_paid_extension_refunds_from_what_was_paid(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    save_card(organization, owner, stripe_api)
    extensions.extension_start(reservation=reservation, actor=owner, hours=4, attempt_token="x")
    # A second extension left unpaid adds nothing to what a cancellation gives back.
    extensions.extension_start(
        reservation=reservation, actor=owner, hours=2, attempt_token="y",
        collect=extensions.PAY_PAGE,
    )  # fmt: skip
    reservation.refresh_from_db()
    assert reservation.total == BLOCK + Decimal("128.00") == succeeded(reservation)
    with django_capture_on_commit_callbacks(execute=True):
        canceled = capacity_services.reservation_cancel(reservation=reservation, actor=owner)
    # Inside a week of the start: half of what was paid, 896.00.
    assert canceled.refund_due == Decimal("448.00")
    settlement.reservation_settle(reservation_id=reservation.pk)
    refunded = sum(Refund.objects.values_list("amount", flat=True), Decimal("0.00"))
    assert refunded == Decimal("448.00")
    assert set(Extension.objects.values_list("state", flat=True)) == {"paid", "canceled"}
    assert not Allocation.objects.filter(reservation=reservation, released_at__isnull=True)


def test_staff_charge_an_extension_to_the_saved_card(catalog, organization, owner, stripe_api):
    from backoffice.roles import OPERATIONS
    from tests.backoffice.conftest import make_staff

    reservation = paid_block(organization, owner, catalog, stripe_api)
    save_card(organization, owner, stripe_api)
    ops = make_staff(OPERATIONS)
    started = extensions.extension_charge_by_staff(
        reservation=reservation, actor=ops, hours=2, reason="Asked by phone", attempt_token="s1"
    )
    reservation.refresh_from_db()
    assert (started.extension.state, started.payment.status) == ("paid", "succeeded")
    assert reservation.total == BLOCK + Decimal("64.00") == succeeded(reservation)
    event = AuditEvent.objects.get(action="extension.charged_by_staff")
    assert (event.actor, event.reason) == (ops, "Asked by phone")


def test_staff_cannot_sell_hours_to_an_organization_refused_new_ones(
    catalog, organization, owner, stripe_api
):
    """A lost dispute pauses new reservations and extensions: staff charged ones too."""
    from backoffice.roles import OPERATIONS
    from billing.services.flags import flag_raise
    from tests.backoffice.conftest import make_staff

    reservation = paid_block(organization, owner, catalog, stripe_api)
    save_card(organization, owner, stripe_api)
    flag_raise(FinanceFlag.Kind.DISPUTE_LOST, "dp_lost", "Lost.", organization=organization)
    with pytest.raises(Conflict) as refused:
        extensions.extension_charge_by_staff(
            reservation=reservation, actor=make_staff(OPERATIONS), hours=2, reason="Phone",
            attempt_token="s3",
        )  # fmt: skip
    assert refused.value.code == "reservations_refused"
    assert Extension.objects.count() == 0
    assert Payment.objects.filter(extension__isnull=False).count() == 0


def test_staff_charged_extension_without_a_saved_card_waits_for_the_customer(
    catalog, organization, owner, stripe_api
):
    from backoffice.roles import OPERATIONS
    from tests.backoffice.conftest import make_staff

    reservation = paid_block(organization, owner, catalog, stripe_api)
    started = extensions.extension_charge_by_staff(
        reservation=reservation, actor=make_staff(OPERATIONS), hours=2, reason="Phone",
        attempt_token="s2",
    )  # fmt: skip
    reservation.refresh_from_db()
    assert (started.extension.state, started.payment.status) == ("held", "pending")
    assert reservation.total == BLOCK


def test_complimentary_hours_above_the_limit_need_finances_refund_permission(
    catalog, organization, owner, stripe_api, settings
):
    from backoffice.roles import FINANCE, OPERATIONS
    from capacity import operations
    from core.errors import NotAllowed
    from tests.backoffice.conftest import make_staff

    settings.EXTENSION_COMPLIMENTARY_LIMIT = Decimal("100.00")
    reservation = paid_block(organization, owner, catalog, stripe_api)
    ops = make_staff(OPERATIONS)
    with pytest.raises(NotAllowed, match="worth more than 100.00"):
        operations.reservation_extend(reservation=reservation, actor=ops, hours=4, reason="SLA")
    assert Extension.objects.count() == 0
    operations.reservation_extend(reservation=reservation, actor=ops, hours=3, reason="SLA")
    boss = make_staff(OPERATIONS)
    boss.groups.add(*make_staff(FINANCE).groups.all())
    operations.reservation_extend(reservation=reservation, actor=boss, hours=4, reason="Outage")
    reservation.refresh_from_db()
    # Granted hours move the end but add nothing to what a cancellation would refund.
    assert (reservation.ends_at - reservation.starts_at, reservation.total) == (31 * HOUR, BLOCK)
    assert sorted(Extension.objects.values_list("state", "price", "reason")) == [
        ("complimentary", Decimal("96.00"), "SLA"),
        ("complimentary", Decimal("128.00"), "Outage"),
    ]


# --- On invoice terms ----------------------------------------------------------------------------
def invoiced_block(organization, owner, catalog, limit: str = "10000") -> Reservation:
    on_invoice_terms(organization, limit)
    reservation = held_reservation(organization, owner, catalog)
    settlement.reservation_settle(reservation_id=reservation.pk)  # in_test_1, 768.00
    reservation.refresh_from_db()
    assert (reservation.state, reservation.invoices.get().stripe_invoice_id) == (
        "scheduled", "in_test_1",
    )  # fmt: skip
    return reservation


def test_on_invoice_terms_the_api_extends_with_an_invoice_of_its_own(
    catalog, organization, owner, stripe_invoices
):
    reservation = invoiced_block(organization, owner, catalog)
    end = reservation.ends_at
    client = api_client(organization, owner)
    quoted = client.get(extend_url(reservation) + "?hours=2").json()
    assert (quoted["price"], quoted["available"]) == ("64.00", True)
    response = client.post(
        extend_url(reservation), {"hours": 2, "client_token": "tok-1"},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 202
    extension = Extension.objects.get()
    body = response.json()
    assert body == {
        "id": extension.public_id,
        "reservation": reservation.public_id,
        "state": "paid",
        "hours": 2,
        "starts_at": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ends_at": (end + 2 * HOUR).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "price": "64.00",
        "currency": "usd",
        "hold_expires_at": None,
        "payment": None,
        "payment_status": None,
        "payment_intent": None,
        "client_secret": None,
    }
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total) == (end + 2 * HOUR, BLOCK + 2 * PER_HOUR)
    assert all(ext is None and e == end + 2 * HOUR for _, _, e, ext in live_windows(reservation))
    invoice = extension.invoice
    assert (invoice.stripe_invoice_id, invoice.amount, invoice.status) == (
        "in_test_2", Decimal("64.00"), "open",
    )  # fmt: skip
    assert sorted(LedgerEntry.objects.values_list("kind", "amount", "invoice")) == [
        ("charge", Decimal("64.00"), invoice.pk),
        ("charge", BLOCK, reservation.invoices.get(extension=None).pk),
    ]
    # The same request again is the same extension: no second invoice, no second charge.
    again = client.post(
        extend_url(reservation), {"hours": 2, "client_token": "tok-1"},
        content_type="application/json",
    )  # fmt: skip
    assert (again.status_code, again.json()["id"], again.json()["state"]) == (
        202, extension.public_id, "paid",
    )  # fmt: skip
    assert (Extension.objects.count(), Invoice.objects.count(), LedgerEntry.objects.count()) == (
        1, 2, 2,
    )  # fmt: skip
    # The reservation's page tells it as an invoice, not a payment.
    page = " ".join(
        client_for(owner)
        .get(f"/o/{organization.slug}/reservations/{reservation.public_id}/")
        .content.decode()
        .split()
    )
    assert "Extension by 2 h: invoiced" in page
    assert "Extension by 2 h held while paying" not in page
    assert "the extra hours get an invoice of their own and the end moves once it is issued" in page
    assert len([c for c in stripe_invoices.calls if c[0] == "create"]) == 2
    assert Payment.objects.count() == 0


def test_on_invoice_terms_past_the_credit_limit_the_extension_is_refused_and_changes_nothing(
    catalog, organization, owner, stripe_invoices
):
    reservation = invoiced_block(organization, owner, catalog, limit="800")
    end = reservation.ends_at
    with pytest.raises(credit.CreditLimitExceeded) as refused:
        extensions.extension_start(reservation=reservation, actor=owner, hours=2, attempt_token="a")
    assert refused.value.message == (
        f"This would take {organization.name} past its credit limit of $800.00: $768.00 is owed "
        "or committed, so $32.00 is left and this costs $64.00. Pay an open invoice first, or "
        "ask your account manager to raise the limit."
    )
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total) == (end, BLOCK)
    assert (Extension.objects.count(), Invoice.objects.count(), LedgerEntry.objects.count()) == (
        0, 1, 1,
    )  # fmt: skip
    assert Allocation.objects.filter(extension__isnull=False).count() == 0
    # One hour fits (32.00): the held hours count against the limit until invoiced.
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=1, attempt_token="b"
    )
    assert (started.extension.state, started.invoice.amount) == ("paid", PER_HOUR)
    assert selectors.credit_used_for_org(organization) == Decimal("800.00")


def test_on_invoice_terms_stripe_away_holds_the_hours_until_the_sweep_sends_the_invoice(
    catalog, organization, owner, stripe_invoices
):
    reservation = invoiced_block(organization, owner, catalog)
    end = reservation.ends_at
    stripe_invoices.fail = [400]
    started = extensions.extension_start(
        reservation=reservation, actor=owner, hours=2, attempt_token="a"
    )
    assert (started.extension.state, started.invoice.stripe_invoice_id) == ("held", None)
    assert started.invoice.attempts == 1
    reservation.refresh_from_db()
    assert (reservation.ends_at, reservation.total) == (end, BLOCK)
    # Held and not invoiced: it counts against the credit line all the same.
    assert selectors.credit_used_for_org(organization) == BLOCK + 2 * PER_HOUR
    assert tasks.settle_pending() == 1  # sends it and applies the extension (eager here)
    extension = Extension.objects.get()
    reservation.refresh_from_db()
    assert (extension.state, extension.invoice.stripe_invoice_id) == ("paid", "in_test_2")
    assert (reservation.ends_at, reservation.total) == (end + 2 * HOUR, BLOCK + 2 * PER_HOUR)
    assert selectors.balance_for_org(organization) == BLOCK + 2 * PER_HOUR
    assert tasks.settle_pending() == 0


def test_on_invoice_terms_an_unsent_invoice_goes_with_a_lapsed_hold(
    catalog, organization, owner, stripe_invoices
):
    reservation = invoiced_block(organization, owner, catalog)
    stripe_invoices.fail = [400]
    extensions.extension_start(reservation=reservation, actor=owner, hours=2, attempt_token="a")
    with time_machine.travel(timezone.now() + timedelta(minutes=20)):
        capacity_extensions.lapsed_extensions_expire()
        assert tasks.settle_pending() == 1
    extension = Extension.objects.get()
    assert (extension.state, extension.invoice.status, extension.invoice.stripe_invoice_id) == (
        "lapsed", "void", None,
    )  # fmt: skip
    assert len([c for c in stripe_invoices.calls if c[0] == "create"]) == 2  # block + 1 try
    assert selectors.credit_used_for_org(organization) == BLOCK
    assert tasks.settle_pending() == 0


def test_on_invoice_terms_the_portal_extends_with_an_invoice(
    catalog, organization, owner, stripe_invoices
):
    reservation = invoiced_block(organization, owner, catalog)
    browser = client_for(owner)
    url = f"/o/{organization.slug}/reservations/{reservation.public_id}/extend/"
    page = browser.get(url + "?hours=3")
    assert b'data-testid="extend-invoice"' in page.content
    assert "Extend and invoice $96.00" in page.content.decode()
    response = browser.post(url, {"hours": 3, "attempt": "p-1", "pay": "invoice"}, follow=True)
    extension = Extension.objects.get()
    assert (extension.state, extension.invoice.amount) == ("paid", Decimal("96.00"))
    assert "Extended by 3 h: invoice HB-0002 for 96.00 USD is on your terms." in (
        response.content.decode()
    )
    billing = browser.get(f"/o/{organization.slug}/billing/").content.decode()
    assert "extension 3 h" in billing
    assert "HB-0001" in billing
    assert "HB-0002" in billing


def test_staff_charged_extension_on_invoice_terms_is_invoiced_within_the_limit(
    catalog, organization, owner, stripe_invoices
):
    from backoffice.roles import OPERATIONS
    from tests.backoffice.conftest import make_staff

    reservation = invoiced_block(organization, owner, catalog, limit="800")
    ops = make_staff(OPERATIONS)
    with pytest.raises(credit.CreditLimitExceeded):
        extensions.extension_charge_by_staff(
            reservation=reservation, actor=ops, hours=2, reason="Phone", attempt_token="s1"
        )
    assert Extension.objects.count() == 0
    started = extensions.extension_charge_by_staff(
        reservation=reservation, actor=ops, hours=1, reason="Phone", attempt_token="s2"
    )
    reservation.refresh_from_db()
    assert (started.extension.state, started.payment, started.invoice.amount) == (
        "paid", None, PER_HOUR,
    )  # fmt: skip
    assert reservation.total == BLOCK + PER_HOUR
    assert selectors.balance_for_org(organization) == BLOCK + PER_HOUR
    assert AuditEvent.objects.get(action="extension.charged_by_staff").actor == ops


def test_on_invoice_terms_an_extension_invoice_out_of_tries_waits_for_finance_or_its_hold(
    catalog, organization, owner, stripe_invoices, settings
):
    settings.INVOICE_CREATE_MAX_ATTEMPTS = 2
    reservation = invoiced_block(organization, owner, catalog)
    stripe_invoices.fail = [400, 400]
    extensions.extension_start(reservation=reservation, actor=owner, hours=2, attempt_token="a")
    assert tasks.settle_pending() == 1  # the second and last try
    invoice = Invoice.objects.get(extension__isnull=False)
    assert (invoice.attempts, invoice.status) == (2, "pending")
    assert FinanceFlag.objects.get().kind == "invoice_not_sent"
    assert tasks.settle_pending() == 0  # finance's now, while the hours are held
    with time_machine.travel(timezone.now() + timedelta(minutes=20)):
        capacity_extensions.lapsed_extensions_expire()
        assert tasks.settle_pending() == 1  # the hold lapsed: its invoice goes with it
        assert tasks.settle_pending() == 0
    invoice.refresh_from_db()
    assert (invoice.status, invoice.stripe_invoice_id) == ("void", None)
    assert len([c for c in stripe_invoices.calls if c[0] == "create"]) == 3  # block + 2 tries
    assert selectors.credit_used_for_org(organization) == BLOCK
