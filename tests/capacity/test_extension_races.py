"""Extensions racing each other and cancellations, on PostgreSQL (SQLite serializes writers)."""

import threading
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import connection, connections

from capacity import extensions, lifecycle, services
from capacity.models import Allocation, Extension, Reservation
from core.errors import Conflict

from .test_concurrency import overlapping_live_pairs
from .test_reservations import reserve

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
S = Reservation.State


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


def test_an_extension_paid_while_the_block_is_canceled_is_counted_once(
    catalog, organization, owner
):
    """Exactly one order happens: paid then canceled (the refund includes the paid hours), or
    canceled then paid (the extension is refused, so billing refunds its payment in full)."""
    reservation = scheduled(organization, owner, catalog)
    extension = extensions.extension_hold(reservation=reservation, actor=owner, hours=4)
    outcomes = together(
        lambda: extensions.extension_apply(extension=extension, reason="Paid."),
        lambda: services.reservation_cancel(reservation=reservation, actor=owner),
    )
    reservation.refresh_from_db()
    extension.refresh_from_db()
    assert reservation.state == S.CANCELED
    assert outcomes[1] == "ok"
    if outcomes[0] == "ok":
        assert extension.state == "paid"
        assert reservation.total == Decimal("768.00") + Decimal("128.00")
    else:
        assert outcomes[0] == "extension_canceled"
        assert (extension.state, reservation.total) == ("canceled", Decimal("768.00"))
    # Inside a week of the start: half of what was secured, never of what was only asked for.
    assert reservation.refund_due == reservation.total / 2
    assert not Allocation.objects.filter(reservation=reservation, released_at__isnull=True)


def test_an_extension_asked_for_while_the_block_is_canceled(catalog, organization, owner):
    reservation = scheduled(organization, owner, catalog)
    outcomes = together(
        lambda: extensions.extension_hold(reservation=reservation, actor=owner, hours=4),
        lambda: services.reservation_cancel(reservation=reservation, actor=owner),
    )
    assert outcomes[1] == "ok"
    assert outcomes[0] in ("ok", "not_extendable")
    reservation.refresh_from_db()
    assert (reservation.state, reservation.total, reservation.refund_due) == (
        S.CANCELED, Decimal("768.00"), Decimal("384.00"),
    )  # fmt: skip
    assert set(Extension.objects.values_list("state", flat=True)) <= {"canceled"}
    assert not Allocation.objects.filter(reservation=reservation, released_at__isnull=True)
