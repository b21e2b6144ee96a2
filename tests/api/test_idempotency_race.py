"""Clients that retry fast send the same Idempotency-Key while the first request is still
running. On PostgreSQL, where requests really run side by side, every copy must end in the one
reservation: a 201, the same 201 replayed, or a 409 saying the first is still in flight.
`.ci/run` always runs this file there."""

import threading

import pytest
from django.db import connection, connections

from capacity.models import Reservation

from .test_api import BLOCK, api, key_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
COPIES = 6


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")


def send_copies(key: str, headers: dict[str, str]) -> list[tuple[int, str, str]]:
    """COPIES threads post the same reservation at the same moment; (status, replayed, id or
    error type) of each answer."""
    start = threading.Barrier(COPIES, timeout=30)
    answers: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def post() -> None:
        try:
            client = api(key)
            start.wait()
            response = client.post(
                "/api/v1/reservations/", BLOCK, content_type="application/json", **headers
            )
            body = response.json()
            outcome = body["id"] if response.status_code == 201 else body["error"]["code"]
            answer = (response.status_code, response.get("Idempotent-Replayed", ""), outcome)
        finally:
            connections.close_all()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=post) for _ in range(COPIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == COPIES
    return answers


def test_copies_of_one_keyed_request_make_exactly_one_reservation(catalog, organization, owner):
    answers = send_copies(key_for(organization, owner), {"HTTP_IDEMPOTENCY_KEY": "retry-1"})
    (reservation,) = Reservation.objects.all()
    first = [a for a in answers if a[:2] == (201, "")]
    assert first == [(201, "", reservation.public_id)]
    for answer in answers:
        assert answer in {
            (201, "", reservation.public_id),
            (201, "true", reservation.public_id),
            (409, "", "idempotency_key_in_use"),
        }


def test_negative_control_without_the_key_every_copy_reserves(catalog, organization, owner):
    """Proves the race above is real: the same copies without a key each make a reservation."""
    answers = send_copies(key_for(organization, owner), {})
    assert sorted(a[0] for a in answers) == [201] * COPIES
    assert Reservation.objects.count() == COPIES
