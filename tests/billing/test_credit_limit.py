"""On invoice terms the credit limit holds: confirming more than is left is refused, counting
what is owed and what is confirmed but not yet invoiced."""

from decimal import Decimal

import pytest

from accounts import credit
from accounts.models import Organization
from billing import selectors
from billing.models import LedgerEntry
from capacity import quotes
from capacity.models import Reservation
from core.models import AuditEvent
from tests.billing.test_invoices_and_disputes import stripe_invoices  # noqa: F401
from tests.capacity.test_quotes import quote

S = Reservation.State
pytestmark = pytest.mark.django_db


def on_invoice(org: Organization, limit: str) -> None:
    Organization.objects.filter(pk=org.pk).update(
        payment_terms="invoice", payment_days=30, credit_limit=Decimal(limit)
    )
    org.refresh_from_db()


def test_credit_in_use_is_the_balance_plus_what_is_confirmed_and_not_yet_invoiced(
    catalog, organization, owner
):
    on_invoice(organization, "5000")
    confirmed = quote(organization, catalog)  # 710.40, held: not counted until accepted
    assert selectors.credit_used_for_org(organization) == Decimal("0.00")
    Reservation.objects.filter(pk=confirmed.pk).update(state=S.SCHEDULED)
    LedgerEntry.objects.create(
        organization=organization, kind="usage", amount=Decimal("12.50"), currency="usd",
        description="tokens",
    )  # fmt: skip
    assert selectors.credit_used_for_org(organization) == Decimal("722.90")
    assert credit.credit_used(organization) == Decimal("722.90")  # through CREDIT_USED_HOOK


def test_accepting_a_quote_past_the_limit_is_refused_and_changes_nothing(
    catalog, organization, owner
):
    on_invoice(organization, "1000")
    first = quote(organization, catalog)
    quotes.quote_accept(reservation=first, actor=owner)
    second = quote(organization, catalog)
    with pytest.raises(credit.CreditLimitExceeded) as refused:
        quotes.quote_accept(reservation=second, actor=owner)
    assert refused.value.message == (
        f"This would take {organization.name} past its credit limit of $1,000.00: $710.40 is "
        "owed or committed, so $289.60 is left and this costs $710.40. Pay an open invoice "
        "first, or ask your account manager to raise the limit."
    )
    assert refused.value.code == "credit_limit_exceeded"
    second.refresh_from_db()
    assert second.state == S.HELD
    assert (
        AuditEvent.objects.filter(
            action="reservation.transition", object_id=str(second.pk), data__to="scheduled"
        ).count()
        == 0
    )
    on_invoice(organization, "1500")
    assert quotes.quote_accept(reservation=second, actor=owner).state == S.SCHEDULED


def test_card_customers_have_no_credit_to_check(organization):
    assert credit.require_credit(organization=organization, amount=Decimal("1000000")) is None


def test_reserving_on_invoice_terms_past_the_limit_is_refused_and_holds_nothing(
    catalog, organization, owner
):
    from capacity.models import Allocation
    from tests.billing.conftest import held_reservation

    on_invoice(organization, "1000")
    first = held_reservation(organization, owner, catalog)  # 768.00, confirmed at once
    assert first.state == S.SCHEDULED
    with pytest.raises(credit.CreditLimitExceeded) as refused:
        held_reservation(organization, owner, catalog)
    assert "$768.00 is owed or committed, so $232.00 is left and this costs $768.00" in (
        refused.value.message
    )
    assert list(Reservation.objects.values_list("pk", flat=True)) == [first.pk]
    assert Allocation.objects.filter(released_at__isnull=True).count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_extensions_racing_for_the_last_credit_get_one(
    catalog, organization, owner, stripe_invoices
):
    """PostgreSQL: the organization's row lock makes the credit checks take turns, so two
    extensions that each fit but not both cannot both be held (the blocks are in different
    regions: no pool lock orders them)."""
    import threading

    from django.db import connection, connections

    from billing.models import Invoice
    from billing.services import extensions, settlement
    from capacity import services as capacity_services
    from capacity.models import Extension
    from capacity.windows import Window
    from tests.billing.conftest import held_reservation

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL")
    # Blocks of 768.00 (east) and 576.00 (west); 2 h more is 64.00 or 48.00: one fits, not both.
    on_invoice(organization, "1408")
    east = held_reservation(organization, owner, catalog)
    west = capacity_services.reservation_create(
        organization=organization, user=owner, gpu_model=catalog.h100, region=catalog.west,
        node_count=2, window=Window(east.starts_at, east.ends_at),
    )  # fmt: skip
    blocks = [east, west]
    for block in blocks:
        settlement.reservation_settle(reservation_id=block.pk)
    start = threading.Barrier(2, timeout=30)
    outcomes: list[str] = []
    lock = threading.Lock()

    def extend(reservation: Reservation) -> None:
        try:
            start.wait()
            started = extensions.extension_start(
                reservation=reservation, actor=owner, hours=2, attempt_token="race"
            )
            outcome = started.extension.state
        except credit.CreditLimitExceeded:
            outcome = "refused"
        finally:
            connections.close_all()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=extend, args=(block,)) for block in blocks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["paid", "refused"]
    (extension,) = Extension.objects.all()
    assert Invoice.objects.get(extension__isnull=False).amount == extension.price
    assert selectors.balance_for_org(organization) == Decimal("1344.00") + extension.price
