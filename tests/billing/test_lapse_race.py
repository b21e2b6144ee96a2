"""A late payment reported several times at once (the webhook and its retries, a status check)
on PostgreSQL is booked once: one confirmation, one refund of the difference, exact ledger.
`.ci/run` always runs this file there."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection, connections
from django.utils import timezone

from billing.models import LedgerEntry, Payment, Refund
from billing.services import payments
from capacity import services as capacity_services
from capacity.models import ListPrice, Reservation

from .conftest import card, held_reservation, stripe_charges

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
RACERS = 4


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")


def test_racing_notices_of_one_late_payment_book_it_once(catalog, organization, owner, stripe_api):
    reservation = held_reservation(organization, owner, catalog)  # 768.00
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        capacity_services.lapsed_holds_expire()
        ListPrice.objects.filter(region=catalog.east).update(price_per_gpu_hour=Decimal("1.50"))
        payment = stripe_charges(reservation, card(stripe_api))
        start = threading.Barrier(RACERS, timeout=30)
        errors: list[Exception] = []

        def notice() -> None:
            try:
                start.wait()
                payments.payment_sync(payment_intent_id=payment.stripe_payment_intent_id)
            except Exception as exc:  # noqa: BLE001 - reported below, not lost in the thread
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=notice) for _ in range(RACERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    reservation.refresh_from_db()
    payment = Payment.objects.get(pk=payment.pk)
    assert (reservation.state, payment.status, payment.amount_refunded) == (
        Reservation.State.SCHEDULED,
        "succeeded",
        Decimal("192.00"),
    )
    assert list(Refund.objects.values_list("amount", "status")) == [
        (Decimal("192.00"), "succeeded")
    ]
    assert sorted(LedgerEntry.objects.values_list("kind", "amount")) == [
        ("charge", Decimal("768.00")),
        ("credit", Decimal("-192.00")),
        ("payment", Decimal("-768.00")),
        ("refund", Decimal("192.00")),
    ]
