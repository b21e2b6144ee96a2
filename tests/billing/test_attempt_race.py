"""Two requests of one payment attempt (a double click, a retried API call) racing on
PostgreSQL get one payment: the unique (reservation, attempt_token) constraint holds the line.
`.ci/run` always runs this file there."""

import threading

import pytest
from django.db import connection, connections

from billing.models import Payment
from billing.services import payments

from .conftest import held_reservation

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
RACERS = 6


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")


def test_racing_copies_of_one_attempt_share_one_payment(catalog, organization, owner):
    reservation = held_reservation(organization, owner, catalog)
    start = threading.Barrier(RACERS, timeout=30)
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            start.wait()
            payment, created = payments._attempt(reservation, owner, "click-1")
        finally:
            connections.close_all()
        with lock:
            results.append((payment.pk, created))

    threads = [threading.Thread(target=attempt) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    (payment,) = Payment.objects.all()
    assert sorted(results, key=lambda r: not r[1]) == [(payment.pk, True)] + [
        (payment.pk, False)
    ] * (RACERS - 1)


def test_syncing_a_payment_locks_only_the_payment_row(catalog, organization, owner, stripe_api):
    """Locking the joined reservation and organization rows as well deadlocked against a
    reservation being made for the same organization (its commit checks its foreign key to
    the organization row while the payment's transaction waits for the allocation lock)."""
    from django.test.utils import CaptureQueriesContext

    from .conftest import card as a_card
    from .conftest import stripe_charges

    reservation = held_reservation(organization, owner, catalog)
    payment = stripe_charges(reservation, a_card(stripe_api))
    with CaptureQueriesContext(connection) as queries:
        payments.payment_sync(payment_intent_id=payment.stripe_payment_intent_id)
    locks = [
        q["sql"] for q in queries if "FOR UPDATE" in q["sql"] and "billing_payment" in q["sql"]
    ]
    assert locks
    assert all(sql.endswith('FOR UPDATE OF "billing_payment"') for sql in locks), locks
