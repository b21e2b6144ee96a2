"""SLA credits racing on PostgreSQL: the same incident reported by several workers at once is
one credit (the unique constraint), and credits for several incidents at once never add up to
more than was paid (each is capped under the reservation's lock). `.ci/run` runs it there."""

import threading
from decimal import Decimal

import pytest
from django.db import connection, connections

from billing.models import Payment, Refund, SlaCredit
from billing.services import payments, sla

from .conftest import card, held_reservation

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
RACERS = 6


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")


def test_racing_reports_credit_once_each_and_never_beyond_what_was_paid(
    catalog, organization, owner, stripe_api, settings
):
    settings.SLA_CREDIT_POLICY = {
        "degraded": {"percent": Decimal("100")},
        "force_released": {"percent": Decimal("100")},
    }
    reservation = held_reservation(organization, owner, catalog)  # 2 nodes x 24 h: $768.00
    payment = payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(stripe_api), attempt_token="p"
    )
    # Three racers report the release (20 h of 2 nodes: $640.00), three a failed node each
    # (20 h of 1 node: $320.00): at most $768.00 can go back, whoever wins.
    reports = [("force_released", "release", 1200)] * 3 + [
        ("degraded", f"incident:{n}", 1200) for n in range(3)
    ]
    start = threading.Barrier(RACERS, timeout=30)
    errors: list[BaseException] = []

    def report(cause: str, key: str, minutes: int) -> None:
        try:
            start.wait()
            sla.sla_credit_grant(
                reservation_id=reservation.pk, cause=cause, key=key, minutes=minutes
            )
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=report, args=r) for r in reports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert errors == []
    credits = list(SlaCredit.objects.order_by("id"))
    assert SlaCredit.objects.filter(cause="force_released").count() == 1
    total = sum((c.amount for c in credits), Decimal("0.00"))
    assert total == Decimal("768.00")  # asked for $1,600.00: capped at what was paid
    assert {c.status for c in credits} == {"granted"}
    refunded = sum(Refund.objects.values_list("amount", flat=True), Decimal("0.00"))
    assert refunded == total
    assert Payment.objects.get(pk=payment.pk).amount_refunded == Decimal("768.00")
