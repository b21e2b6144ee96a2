"""The admin index is a dashboard: utilization, revenue, what needs a look, reviews."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Organization
from accounts.permissions import Role
from backoffice import dashboard
from billing.models import LedgerEntry
from capacity import services
from capacity.models import Reservation
from capacity.windows import Window
from tests.capacity.conftest import NEXT_HOUR, NOW, Catalog, catalog, frozen_clock  # noqa: F401
from tests.conftest import member_of
from tests.factories import OrganizationFactory

from .conftest import verified_client

pytestmark = pytest.mark.django_db


def book(catalog: Catalog, organization: Organization, nodes: int, start, hours: int):
    user = member_of(organization, Role.OWNER)
    return services.reservation_create(
        organization=organization,
        user=user,
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=nodes,
        window=Window(start, start + timedelta(hours=hours)),
    )


def ledger(org: Organization, kind: str, amount: str, when: datetime) -> None:
    LedgerEntry.objects.create(
        organization=org,
        kind=kind,
        amount=Decimal(amount),
        currency="usd",
        description=kind,
        created_at=when,
    )


def test_utilization_is_the_booked_share_of_node_hours_per_day(catalog):
    org = OrganizationFactory()
    # us-east has 12 available nodes (4 + 8). Six nodes for 12 hours on Dec 2, from 10:00.
    book(catalog, org, 4, datetime(2026, 12, 2, 10, tzinfo=UTC), 12)
    book(catalog, org, 2, datetime(2026, 12, 2, 10, tzinfo=UTC), 12)
    heatmap = dashboard.utilization(NOW)
    rows = {(r.gpu_model.slug, r.region.code): r for r in heatmap.rows}
    assert sorted(rows) == [("h100", "us-east"), ("h100", "us-west")]
    east = rows[("h100", "us-east")]
    assert east.nodes == 12
    assert len(east.cells) == 56
    assert east.cells[0].day.isoformat() == "2026-12-01"
    assert [c.percent for c in east.cells[:3]] == [0, 25, 0]  # 72 of 288 node-hours
    assert east.cells[1].shade == dashboard.SHADES[2]
    assert rows[("h100", "us-west")].cells[1].percent == 0
    assert east.average == 0  # 25% on one day of 56 rounds to 0


def test_revenue_counts_this_month_and_last_from_the_ledger(catalog):
    org = OrganizationFactory()
    K = LedgerEntry.Kind
    ledger(org, K.CHARGE, "1000.00", datetime(2026, 12, 1, 1, tzinfo=UTC))
    ledger(org, K.PAYMENT, "-1000.00", datetime(2026, 12, 1, 1, tzinfo=UTC))
    ledger(org, K.USAGE, "12.34", datetime(2026, 12, 1, 2, tzinfo=UTC))
    ledger(org, K.CREDIT, "-100.00", datetime(2026, 12, 1, 3, tzinfo=UTC))
    ledger(org, K.REFUND, "100.00", datetime(2026, 12, 1, 3, tzinfo=UTC))
    ledger(org, K.CHARGE, "500.00", datetime(2026, 11, 30, 23, tzinfo=UTC))
    ledger(org, K.INVOICE_PAYMENT, "-500.00", datetime(2026, 11, 15, tzinfo=UTC))
    ledger(org, K.CHARGE, "9999.00", datetime(2026, 10, 31, 23, tzinfo=UTC))  # too old
    assert [
        (m.label, m.month.isoformat(), m.currency, m.booked, m.collected)
        for m in dashboard.revenue(NOW)
    ] == [
        ("This month", "2026-12-01", "usd", Decimal("912.34"), Decimal("900.00")),
        ("Last month", "2026-11-01", "usd", Decimal("500.00"), Decimal("500.00")),
    ]


def test_attention_counts_held_failed_and_stuck_reservations(catalog, frozen_clock):
    org = OrganizationFactory(name="Acme")
    held = book(catalog, org, 1, NEXT_HOUR, 4)
    failed = book(catalog, org, 1, NEXT_HOUR + timedelta(days=1), 4)
    Reservation.objects.filter(pk=failed.pk).update(state=Reservation.State.FAILED)
    stuck = book(catalog, org, 1, NEXT_HOUR + timedelta(days=2), 4)
    Reservation.objects.filter(pk=stuck.pk).update(
        state=Reservation.State.PROVISIONING, updated_at=NOW - timedelta(hours=1)
    )
    old_failure = book(catalog, org, 1, NEXT_HOUR + timedelta(days=3), 4)
    Reservation.objects.filter(pk=old_failure.pk).update(
        state=Reservation.State.FAILED, updated_at=NOW - timedelta(days=8)
    )
    attention = dashboard.attention(NOW)
    assert (attention.held_count, attention.failed_count, attention.stuck_count) == (1, 1, 1)
    assert [r.public_id for r in attention.held] == [held.public_id]
    assert [r.public_id for r in attention.failing] == [failed.public_id, stuck.public_id]


def test_new_organizations_wait_for_review_oldest_first(catalog):
    first = OrganizationFactory(created_at=NOW - timedelta(days=2))
    second = OrganizationFactory(created_at=NOW - timedelta(days=1))
    OrganizationFactory(reviewed_at=NOW)
    waiting, count = dashboard.waiting_review()
    assert [o.pk for o in waiting] == [first.pk, second.pk]
    assert count == 2


@pytest.mark.parametrize(
    ("group", "panels"),
    [
        ("Sales", {"revenue", "attention", "review", "utilization"}),
        ("Operations", {"attention", "review", "utilization"}),
        ("Finance", {"revenue", "attention", "review", "utilization"}),
    ],
)
def test_each_group_sees_the_panels_its_permissions_cover(catalog, group, panels):
    from .conftest import make_staff

    OrganizationFactory(name="Fresh Startup")
    client = verified_client(make_staff(group))
    page = client.get("/admin/").content.decode()
    every = ("revenue", "attention", "review", "utilization")
    assert {p for p in every if f'id="bo-{p}"' in page} == panels
    assert "Fresh Startup" in page


def test_the_dashboard_costs_the_same_queries_with_more_data(catalog):
    from .conftest import make_staff

    client = verified_client(make_staff(superuser=True))
    org = OrganizationFactory()
    book(catalog, org, 1, NEXT_HOUR, 4)
    client.get("/admin/")
    with CaptureQueriesContext(connection) as few:
        assert client.get("/admin/").status_code == 200
    for day in range(1, 11):
        book(catalog, OrganizationFactory(), 1, NEXT_HOUR + timedelta(days=day), 4)
    with CaptureQueriesContext(connection) as many:
        assert client.get("/admin/").status_code == 200
    assert len(many) == len(few)


@pytest.mark.parametrize("group", ["Sales", "Operations", "Finance"])
def test_every_link_on_the_dashboard_opens_for_the_group_that_sees_it(catalog, group):
    import re

    from .conftest import make_staff

    org = OrganizationFactory(name="Fresh Startup")
    book(catalog, org, 1, NEXT_HOUR, 4)
    client = verified_client(make_staff(group))
    page = client.get("/admin/").content.decode()
    links = set(re.findall(r'href="(/admin/[^"#]*)"', page)) - {"/admin/logout/"}
    assert links  # the panels and the app list link somewhere
    for link in sorted(links):
        assert client.get(link.replace("&amp;", "&")).status_code == 200, link


def test_the_heatmap_costs_the_same_queries_with_more_pools(catalog):
    from capacity.models import Cluster, GpuModel, ListPrice, Node

    from .conftest import make_staff

    client = verified_client(make_staff(superuser=True))
    client.get("/admin/")
    with CaptureQueriesContext(connection) as two_pools:
        client.get("/admin/")
    for n in range(3):
        gpu = GpuModel.objects.create(slug=f"gpu-{n}", name=f"GPU {n}", memory_gb=80)
        ListPrice.objects.create(gpu_model=gpu, region=catalog.east, price_per_gpu_hour=1)
        cluster = Cluster.objects.create(code=f"extra-{n}", region=catalog.east, gpu_model=gpu)
        Node.objects.create(cluster=cluster, hostname=f"extra-{n}-n01")
    with CaptureQueriesContext(connection) as five_pools:
        response = client.get("/admin/")
    assert len(response.context["heatmap"].rows) == 5
    assert len(five_pools) == len(two_pools)
