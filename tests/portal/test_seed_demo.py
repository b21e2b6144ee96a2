from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Membership, Organization, User
from billing import gateway, selectors
from billing.models import Invoice, LedgerEntry
from billing.services import accounts, books
from capacity import demo as capacity_demo
from capacity.models import Allocation, Cluster, GpuModel, ListPrice, Node, Region, Reservation
from core.models import AuditEvent
from core.money import to_minor
from tests.billing.conftest import localstripe_url, stripe_api  # noqa: F401


@pytest.mark.django_db
def test_seed_demo_is_idempotent(monkeypatch, capsys):
    monkeypatch.setenv("DEMO_PASSWORD", "demo-password-for-tests")
    call_command("seed_demo")
    bookings = list(Reservation.objects.values_list("public_id", "state"))
    call_command("seed_demo")
    assert sorted(User.objects.values_list("email", "is_staff", "is_superuser")) == [
        ("admin@example.com", True, True),
        ("demo@example.com", False, False),
        ("finance@example.com", True, False),
        ("ml-platform@northwind.example", False, False),
        ("ops@example.com", True, False),
        ("sales@example.com", True, False),
    ]
    assert sorted(Organization.objects.values_list("slug", flat=True)) == ["demo", "northwind"]
    assert sorted(Membership.objects.values_list("user__email", "organization__slug", "role")) == [
        ("demo@example.com", "demo", "owner"),
        ("ml-platform@northwind.example", "northwind", "owner"),
    ]
    demo = User.objects.get(email="demo@example.com")
    assert demo.is_verified
    assert demo.check_password("demo-password-for-tests")
    assert "demo@example.com / demo-password-for-tests" in capsys.readouterr().out
    # The catalog: 3 regions x 3 GPU models x 2 clusters x 16 nodes, every pool priced.
    assert (Region.objects.count(), GpuModel.objects.count(), Cluster.objects.count()) == (3, 3, 18)
    assert Node.objects.count() == 288
    assert ListPrice.objects.count() == 9
    # The other customer's bookings are made once, all confirmed on invoice terms.
    assert list(Reservation.objects.values_list("public_id", "state")) == bookings
    assert {state for _, state in bookings} == {"scheduled"}
    assert Allocation.objects.count() == sum(
        Reservation.objects.values_list("node_count", flat=True)
    )


@pytest.mark.django_db
def test_seed_demo_refuses_production_settings(settings):
    settings.DEMO_DATA_ALLOWED = False
    with pytest.raises(CommandError, match="refuses to run"):
        call_command("seed_demo")
    assert User.objects.count() == 0


def test_seeding_leaves_the_app_registry_as_it_was(db):
    """Making the staff groups in-process must not strip the running apps of their models
    modules: Django would then never make their permissions again (after a flush, say)."""
    from django.apps import apps

    from backoffice.roles import sync_staff_groups

    before = {config.label: config.models_module for config in apps.get_app_configs()}
    sync_staff_groups(apps)
    after = {config.label: config.models_module for config in apps.get_app_configs()}
    assert after == before
    assert after["accounts"] is not None


@pytest.mark.django_db
def test_seed_demo_invoices_the_invoice_terms_customer_at_stripe(monkeypatch, capsys, stripe_api):
    """With a Stripe that issues invoices (localstripe here), Northwind AI is on invoice terms,
    approved by sales; each booking is invoiced there through settlement, one invoice is paid
    (out of band) and booked, and check_books finds the ledger equal to Stripe. Again: nothing
    new at Stripe or here."""
    monkeypatch.setenv("DEMO_PASSWORD", "demo-password-for-tests")
    monkeypatch.setattr(capacity_demo, "BOOKINGS_PER_POOL", 1)  # 9 bookings, not 90
    call_command("seed_demo")
    northwind = Organization.objects.get(slug="northwind")
    assert (northwind.payment_terms, northwind.payment_days, northwind.credit_limit) == (
        "invoice",
        30,
        Decimal("5000000.00"),
    )
    approval = AuditEvent.objects.get(action="organization.terms_changed", organization=northwind)
    assert approval.actor_email == "sales@example.com"
    bookings = Reservation.objects.filter(organization=northwind)
    assert sorted(bookings.values_list("state", flat=True)) == ["scheduled"] * 9
    invoices = Invoice.objects.filter(organization=northwind)
    assert sorted(invoices.values_list("reservation_id", flat=True)) == sorted(
        bookings.values_list("pk", flat=True)
    )
    assert sorted(invoices.values_list("status", flat=True)) == ["open"] * 8 + ["paid"]
    customer = accounts.billing_account_ensure(northwind).stripe_customer_id
    at_stripe = {i.id: i for i in gateway.invoices_list(customer_id=customer)}
    for invoice in invoices:
        theirs = at_stripe[invoice.stripe_invoice_id]
        assert (theirs.status, theirs.total) == (invoice.status, to_minor(invoice.amount, "usd"))
    paid = invoices.get(status="paid")
    assert at_stripe[paid.stripe_invoice_id].paid_out_of_band is True
    assert selectors.balance_for_org(northwind) == sum(
        invoices.exclude(pk=paid.pk).values_list("amount", flat=True), Decimal("0.00")
    )
    out = capsys.readouterr().out
    assert (
        "Invoice terms: ml-platform@northwind.example / demo-password-for-tests  (organization "
        "/o/northwind/, Invoice, net 30; invoices at Stripe: 8 open, 1 paid)"
    ) in out
    assert "Skipped invoices" not in out

    ledger = list(LedgerEntry.objects.order_by("pk").values_list("pk", flat=True))
    call_command("seed_demo")
    assert list(LedgerEntry.objects.order_by("pk").values_list("pk", flat=True)) == ledger
    assert len(gateway.invoices_list(customer_id=customer)) == 9
    assert "invoices at Stripe: 8 open, 1 paid" in capsys.readouterr().out
    report = books.books_check(grace=timedelta(0))
    assert (report.differences, report.invoices, report.reservations) == ([], 9, 9)


@pytest.mark.django_db
def test_seed_demo_without_stripe_says_what_it_skipped(monkeypatch, capsys, settings):
    settings.STRIPE_SECRET_KEY = ""
    monkeypatch.setattr(capacity_demo, "BOOKINGS_PER_POOL", 1)
    call_command("seed_demo")
    northwind = Organization.objects.get(slug="northwind")
    assert northwind.payment_terms == "card"
    assert Invoice.objects.count() == 0
    assert set(Reservation.objects.values_list("state", flat=True)) == {"scheduled"}
    assert (
        "  Skipped invoices: Stripe is not configured (no STRIPE_SECRET_KEY); Northwind AI's "
        "bookings are confirmed without one."
    ) in capsys.readouterr().out
