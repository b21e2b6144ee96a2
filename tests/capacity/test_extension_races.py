"""Extensions racing each other and cancellations, on PostgreSQL (SQLite serializes writers)."""

import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, connections

from billing.models import Refund
from billing.services import books, payments, settlement
from capacity import extensions, lifecycle, services
from capacity.models import Allocation, Extension, Reservation
from core.errors import Conflict
from tests.billing.conftest import card, held_reservation, localstripe_url, stripe_api  # noqa: F401
from tests.billing.test_extensions import confirm_at_stripe

from .test_concurrency import overlapping_live_pairs
from .test_reservations import reserve

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
S = Reservation.State
# 2 nodes x 8 H100 at $2.00/GPU-h: the 24 h block is 768.00, 4 h more 128.00.
BLOCK, EXTRA = Decimal("768.00"), Decimal("128.00")


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")


def together(*calls: Callable[[], object]) -> list[str]:
    """Run the calls at the same moment, each in its own connection; what each ended with."""
    start = threading.Barrier(len(calls), timeout=30)
    outcomes: list[str] = [""] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        try:
            start.wait()
            call()
            outcomes[index] = "ok"
        except Conflict as exc:
            outcomes[index] = exc.code
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def scheduled(organization, owner, catalog) -> Reservation:
    reservation = reserve(organization, owner, catalog, nodes=2, length=24)
    return lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)


def test_extensions_asked_for_at_once_hold_the_hours_once(catalog, organization, owner):
    reservation = scheduled(organization, owner, catalog)
    outcomes = together(
        *[
            lambda: extensions.extension_hold(reservation=reservation, actor=owner, hours=4)
            for _ in range(6)
        ]
    )
    assert sorted(outcomes) == ["extension_pending"] * 5 + ["ok"]
    assert Extension.objects.get().state == "held"
    assert Allocation.objects.filter(extension__isnull=False).count() == 2
    assert overlapping_live_pairs() == 0
    reservation.refresh_from_db()
    assert reservation.total == Decimal("768.00")


def paid_block(organization, owner, catalog, api: str) -> Reservation:
    """A block really paid by card through localstripe: 768.00 (2 nodes x 24 h)."""
    reservation = held_reservation(organization, owner, catalog)
    payments.payment_by_card_create(
        reservation=reservation, actor=owner, payment_method_id=card(api), attempt_token="block"
    )
    reservation.refresh_from_db()
    assert (reservation.state, reservation.total) == (S.SCHEDULED, BLOCK)
    return reservation


def refunded(reservation: Reservation) -> list[tuple[Decimal, str]]:
    return sorted(
        Refund.objects.filter(payment__reservation=reservation, status="succeeded").values_list(
            "amount", "settles"
        )
    )


def books_agree() -> None:
    report = books.books_check(grace=timedelta(0), raise_flags=False)
    assert report.differences == []


def test_an_extension_paid_while_the_block_is_canceled_is_counted_once(
    catalog, organization, owner, stripe_api
):
    """Exactly one order happens: paid then canceled (the refund includes the paid hours), or
    canceled then paid (the extension is refused, so billing refunds its payment in full)."""
    reservation = paid_block(organization, owner, catalog, stripe_api)
    extension = extensions.extension_hold(reservation=reservation, actor=owner, hours=4)
    payment, _ = payments.payment_intent_open(
        reservation=reservation, actor=owner, attempt_token="ext", extension=extension
    )
    intent = payment.stripe_payment_intent_id
    confirm_at_stripe(stripe_api, intent)  # Stripe took 128.00; we hear of it during the cancel
    outcomes = together(
        lambda: payments.payment_sync(payment_intent_id=intent),
        lambda: services.reservation_cancel(reservation=reservation, actor=owner),
    )
    assert outcomes == ["ok", "ok"]
    settlement.reservation_settle(reservation_id=reservation.pk)  # ran on commit; again is a no-op
    reservation.refresh_from_db()
    extension.refresh_from_db()
    payment.refresh_from_db()
    assert reservation.state == S.CANCELED
    if extension.state == "paid":
        # Paid first: half of the 896.00 paid comes back, the extension's payment first.
        assert (reservation.total, reservation.refund_due) == (BLOCK + EXTRA, Decimal("448.00"))
        assert (payment.status, payment.amount_refunded) == ("succeeded", EXTRA)
        assert refunded(reservation) == [
            (Decimal("128.00"), "cancellation"),
            (Decimal("320.00"), "cancellation"),
        ]
    else:
        # Canceled first: half of the block's 768.00, and the extension's 128.00 in full.
        assert extension.state == "canceled"
        assert (reservation.total, reservation.refund_due) == (BLOCK, Decimal("384.00"))
        assert (payment.status, payment.amount_refunded) == ("duplicate", EXTRA)
        assert refunded(reservation) == [
            (Decimal("128.00"), ""),
            (Decimal("384.00"), "cancellation"),
        ]
    assert not Allocation.objects.filter(reservation=reservation, released_at__isnull=True)
    books_agree()


def test_an_extension_asked_for_while_the_block_is_canceled(
    catalog, organization, owner, stripe_api
):
    reservation = paid_block(organization, owner, catalog, stripe_api)
    outcomes = together(
        lambda: extensions.extension_hold(reservation=reservation, actor=owner, hours=4),
        lambda: services.reservation_cancel(reservation=reservation, actor=owner),
    )
    assert outcomes[1] == "ok"
    assert outcomes[0] in ("ok", "not_extendable")
    settlement.reservation_settle(reservation_id=reservation.pk)
    reservation.refresh_from_db()
    assert (reservation.state, reservation.total, reservation.refund_due) == (
        S.CANCELED, BLOCK, Decimal("384.00"),
    )  # fmt: skip
    assert refunded(reservation) == [(Decimal("384.00"), "cancellation")]
    assert set(Extension.objects.values_list("state", flat=True)) <= {"canceled"}
    assert not Allocation.objects.filter(reservation=reservation, released_at__isnull=True)
    books_agree()
