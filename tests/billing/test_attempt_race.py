"""Two requests of one payment attempt (a double click, a retried API call) racing on
PostgreSQL get one payment: the unique (reservation, attempt_token) constraint holds the line.
`.ci/run` always runs this file there."""

import threading

import pytest
from django.db import connection, connections

from billing import services as billing_services
from billing.models import Payment

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
            payment, created = billing_services._attempt(reservation, owner, "click-1")
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
