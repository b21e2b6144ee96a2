"""Negotiated rates: one per organization, GPU model and region at any moment."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from backoffice.roles import FINANCE, OPERATIONS, SALES
from capacity import pricing, rates
from capacity.models import NegotiatedRate
from core.errors import Conflict, NotAllowed, ServiceError
from core.models import AuditEvent
from tests.backoffice.conftest import make_staff

from .conftest import NEXT_HOUR

pytestmark = pytest.mark.django_db

JAN = datetime(2027, 1, 1, tzinfo=UTC)
FEB = datetime(2027, 2, 1, tzinfo=UTC)
MAR = datetime(2027, 3, 1, tzinfo=UTC)
PRICE = "price_per_gpu_hour"


def add(org, catalog, *, region=None, start=JAN, end=FEB, price="1.80", actor=None):
    return rates.negotiated_rate_create(
        organization=org,
        actor=actor or make_staff(SALES),
        gpu_model=catalog.h100,
        region=region,
        price_per_gpu_hour=price,
        valid_from=start,
        valid_until=end,
    )


def rows() -> list[tuple]:
    return list(
        NegotiatedRate.objects.order_by("pk").values_list(
            "organization_id", "region_id", "price_per_gpu_hour", "valid_from", "valid_until"
        )
    )


def test_sales_adds_a_rate_and_it_prices_reservations(catalog, organization):
    sales = make_staff(SALES)
    rate = add(organization, catalog, start=NEXT_HOUR, end=FEB, price="1.75", actor=sales)
    assert (rate.created_by, rate.price_per_gpu_hour) == (sales, Decimal("1.7500"))
    event = AuditEvent.objects.get(action="negotiated_rate.created")
    assert (event.actor, event.organization, event.data) == (
        sales,
        organization,
        {
            "gpu_model": "h100",
            "region": None,
            "price_per_gpu_hour": "1.75",
            "valid_from": NEXT_HOUR.isoformat(),
            "valid_until": FEB.isoformat(),
        },
    )
    quote = pricing.quote(
        organization=organization,
        gpu_model=catalog.h100,
        region=catalog.east,
        node_count=1,
        starts_at=NEXT_HOUR,
        ends_at=NEXT_HOUR.replace(hour=11),
    )
    assert (quote.price_source, quote.total) == ("negotiated", Decimal("14.00"))


@pytest.mark.parametrize(
    ("start", "end"),
    [(JAN, FEB), (JAN.replace(day=31), MAR), (datetime(2026, 12, 1, tzinfo=UTC), MAR)],
    ids=["same", "overlapping-end", "enclosing"],
)
def test_an_overlapping_rate_is_refused_and_nothing_is_saved(catalog, organization, start, end):
    add(organization, catalog)
    before = rows()
    with pytest.raises(Conflict) as refused:
        add(organization, catalog, start=start, end=end, price="1.50")
    assert refused.value.message == (
        f"{organization.name} already has a H100 rate in every region from Fri 1 Jan 2027, "
        "00:00 UTC to Mon 1 Feb 2027, 00:00 UTC (1.8/GPU-h) that overlaps this window. End that "
        "rate first, or choose a window that starts when it ends."
    )
    assert (refused.value.code, refused.value.param) == ("rate_overlap", "valid_from")
    assert rows() == before
    assert AuditEvent.objects.filter(action="negotiated_rate.created").count() == 1


def test_rates_may_follow_each_other_and_regions_may_refine_every_region(
    catalog, organization, other_organization
):
    add(organization, catalog, start=JAN, end=FEB)
    add(organization, catalog, start=FEB, end=MAR)  # touching, not overlapping
    add(organization, catalog, region=catalog.east, start=JAN, end=MAR, price="1.60")
    add(organization, catalog, region=catalog.west, start=JAN, end=MAR, price="1.20")
    add(other_organization, catalog, start=JAN, end=MAR)  # another customer's rate
    with pytest.raises(Conflict, match="rate in us-east from Fri 1 Jan 2027"):
        add(organization, catalog, region=catalog.east, start=FEB, end=MAR)
    # The region's own rate beats the every-region one.
    found = pricing.negotiated_rates(organization, catalog.h100)
    east = pricing.pick_rate(found, catalog.east, JAN)
    assert east.price_per_gpu_hour == Decimal("1.6000")


@pytest.mark.parametrize(
    ("price", "start", "end", "message", "param"),
    [
        ("0", JAN, FEB, "The price per GPU-hour must be more than 0.", PRICE),
        ("abc", JAN, FEB, "Give the price per GPU-hour as an amount, e.g. 1.85.", PRICE),
        ("1.23456", JAN, FEB, "Give the price per GPU-hour with at most 4 decimal places, "
         "below 1,000,000.", PRICE),
        ("1.80", FEB, JAN, "The rate must end after it starts.", "valid_until"),
        ("1.80", FEB, FEB, "The rate must end after it starts.", "valid_until"),
        ("1.80", datetime(2027, 1, 1), FEB, "Give a date and time with a time zone.", "valid_from"),
    ],
)  # fmt: skip
def test_bad_rates_are_refused(catalog, organization, price, start, end, message, param):
    with pytest.raises(ServiceError) as refused:
        add(organization, catalog, price=price, start=start, end=end)
    assert (refused.value.message, refused.value.param) == (message, param)
    assert rows() == []


@pytest.mark.parametrize("group", [OPERATIONS, FINANCE, None])
def test_only_sales_manages_rates(catalog, organization, group):
    rate = add(organization, catalog)
    before = rows()
    actor = make_staff(group)
    with pytest.raises(NotAllowed, match="You are not allowed to add negotiated rates."):
        add(organization, catalog, start=FEB, end=MAR, actor=actor)
    with pytest.raises(NotAllowed, match="You are not allowed to change negotiated rates."):
        rates.negotiated_rate_update(
            rate=rate, actor=actor, gpu_model=catalog.h100, region=None,
            price_per_gpu_hour="1", valid_from=JAN, valid_until=FEB,
        )  # fmt: skip
    with pytest.raises(NotAllowed, match="You are not allowed to delete negotiated rates."):
        rates.negotiated_rate_delete(rate=rate, actor=actor)
    assert rows() == before


def test_changing_a_rate_checks_overlaps_with_the_others_only(catalog, organization):
    sales = make_staff(SALES)
    first = add(organization, catalog, start=JAN, end=FEB)
    add(organization, catalog, start=FEB, end=MAR)
    changed = rates.negotiated_rate_update(
        rate=first, actor=sales, gpu_model=catalog.h100, region=None,
        price_per_gpu_hour="1.70", valid_from=JAN, valid_until=FEB, reason="Renewal",
    )  # fmt: skip
    assert changed.price_per_gpu_hour == Decimal("1.70")
    event = AuditEvent.objects.get(action="negotiated_rate.changed")
    assert (event.data["from"]["price_per_gpu_hour"], event.data["to"]["price_per_gpu_hour"]) == (
        "1.8000",
        "1.70",
    )
    assert event.reason == "Renewal"
    before = rows()
    with pytest.raises(
        Conflict, match="from Mon 1 Feb 2027, 00:00 UTC to Mon 1 Mar 2027, 00:00 UTC"
    ):
        rates.negotiated_rate_update(
            rate=first, actor=sales, gpu_model=catalog.h100, region=None,
            price_per_gpu_hour="1.70", valid_from=JAN, valid_until=MAR,
        )  # fmt: skip
    assert rows() == before


def test_deleting_a_rate_is_audited(catalog, organization):
    rate = add(organization, catalog)
    sales = make_staff(SALES)
    rates.negotiated_rate_delete(rate=rate, actor=sales, reason="Contract ended")
    assert rows() == []
    event = AuditEvent.objects.get(action="negotiated_rate.deleted")
    assert (event.actor, event.organization, event.reason, event.data["price_per_gpu_hour"]) == (
        sales,
        organization,
        "Contract ended",
        "1.8000",
    )
    with pytest.raises(Conflict, match="This rate was already deleted."):
        rates.negotiated_rate_delete(rate=rate, actor=sales)


@pytest.mark.postgres
def test_the_database_refuses_overlapping_rates_on_postgresql(catalog, organization):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")
    add(organization, catalog, start=JAN, end=FEB)
    NegotiatedRate.objects.create(  # every region and a region's own rate may overlap
        organization=organization, gpu_model=catalog.h100, region=catalog.east,
        price_per_gpu_hour=Decimal("1.5"), valid_from=JAN, valid_until=FEB,
    )  # fmt: skip
    for region in (None, catalog.east):
        with pytest.raises(IntegrityError), transaction.atomic():
            NegotiatedRate.objects.create(
                organization=organization, gpu_model=catalog.h100, region=region,
                price_per_gpu_hour=Decimal("1.5"), valid_from=JAN.replace(day=15), valid_until=MAR,
            )  # fmt: skip
    assert NegotiatedRate.objects.count() == 2
