from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from capacity import pricing
from capacity.models import NegotiatedRate
from capacity.windows import validate_node_count, window_for
from core.errors import ServiceError

from .conftest import NEXT_HOUR, NOW, hours


def test_a_window_on_the_hour_is_accepted():
    window = window_for(starts_at=NEXT_HOUR, duration_hours=24)
    assert (window.starts_at, window.ends_at, window.hours) == (
        NEXT_HOUR,
        NEXT_HOUR + hours(24),
        24,
    )
    assert window.starts_on_payment is False


def test_no_start_means_now():
    window = window_for(starts_at=None, duration_hours=3)
    assert (window.starts_at, window.ends_at, window.starts_on_payment) == (
        NOW,
        NOW + hours(3),
        True,
    )


@pytest.mark.parametrize(
    ("starts_at", "duration", "code", "param"),
    [
        (NEXT_HOUR - hours(2), 4, "start_in_past", "starts_at"),
        (NEXT_HOUR - hours(1), 4, "start_in_past", "starts_at"),  # 09:00 began half an hour ago
        (NEXT_HOUR + timedelta(minutes=30), 4, "start_not_on_hour", "starts_at"),
        (NEXT_HOUR + timedelta(seconds=1), 4, "start_not_on_hour", "starts_at"),
        (NEXT_HOUR + timedelta(weeks=8), 4, "start_too_far", "starts_at"),
        (NEXT_HOUR, 0, "duration_out_of_range", "duration_hours"),
        (NEXT_HOUR, 182 * 24 + 1, "duration_out_of_range", "duration_hours"),
        (NEXT_HOUR.replace(tzinfo=None), 4, "start_without_timezone", "starts_at"),
    ],
)
def test_bad_windows_are_refused_with_the_reason(starts_at, duration, code, param):
    with pytest.raises(ServiceError) as excinfo:
        window_for(starts_at=starts_at, duration_hours=duration)
    assert (excinfo.value.code, excinfo.value.param) == (code, param)


def test_the_longest_and_latest_windows_are_allowed():
    latest = NOW.replace(minute=0) + timedelta(weeks=8)  # 09:00 eight weeks on is before the limit
    assert window_for(starts_at=latest, duration_hours=182 * 24).hours == 4368


@pytest.mark.parametrize("count", [0, -1, 65])
def test_node_count_out_of_range(count):
    with pytest.raises(ServiceError, match="between 1 and 64 nodes"):
        validate_node_count(count)


def test_list_price_with_duration_discount(catalog, organization):
    quote = pricing.quote(
        organization=organization, gpu_model=catalog.h100, region=catalog.east,
        node_count=2, starts_at=NEXT_HOUR, ends_at=NEXT_HOUR + hours(200),
    )  # fmt: skip
    # 2 nodes x 8 GPUs x 200 h x $2.00 = $6,400.00; 7+ days takes 5% off.
    assert (quote.gpu_hours, quote.subtotal, quote.discount, quote.total) == (
        3200, Decimal("6400.00"), Decimal("320.00"), Decimal("6080.00"),
    )  # fmt: skip
    assert [(line.description, line.amount) for line in quote.lines] == [
        ("2 × 8 H100 × 200 h at $2.00/GPU-h", Decimal("6400.00")),
        ("7+ days discount (5%)", Decimal("-320.00")),
    ]
    assert quote.price_source == "list"
    assert quote.effective_per_gpu_hour == Decimal("1.9000")


def test_short_blocks_pay_list_price(catalog, organization):
    quote = pricing.quote(
        organization=organization, gpu_model=catalog.h100, region=catalog.west,
        node_count=1, starts_at=NEXT_HOUR, ends_at=NEXT_HOUR + hours(3),
    )  # fmt: skip
    assert (quote.subtotal, quote.discount, quote.total) == (
        Decimal("36.00"), Decimal("0.00"), Decimal("36.00"),
    )  # fmt: skip


def test_negotiated_rate_replaces_list_price_while_valid(catalog, organization):
    NegotiatedRate.objects.create(
        organization=organization, gpu_model=catalog.h100, region=None,
        price_per_gpu_hour=Decimal("1.80"), valid_from=NOW - hours(1), valid_until=NOW + hours(48),
    )  # fmt: skip
    NegotiatedRate.objects.create(
        organization=organization, gpu_model=catalog.h100, region=catalog.east,
        price_per_gpu_hour=Decimal("1.7050"),
        valid_from=NOW - hours(1), valid_until=NOW + hours(48),
    )  # fmt: skip
    east = pricing.quote(
        organization=organization, gpu_model=catalog.h100, region=catalog.east,
        node_count=1, starts_at=NEXT_HOUR, ends_at=NEXT_HOUR + hours(200),
    )  # fmt: skip
    # The region's own rate wins over the every-region one; no duration discount on top.
    assert (east.price_source, east.price_per_gpu_hour, east.total) == (
        "negotiated", Decimal("1.7050"), Decimal("2728.00"),
    )  # fmt: skip
    west = pricing.quote(
        organization=organization, gpu_model=catalog.h100, region=catalog.west,
        node_count=1, starts_at=NEXT_HOUR, ends_at=NEXT_HOUR + hours(10),
    )  # fmt: skip
    assert (west.price_per_gpu_hour, west.total) == (Decimal("1.80"), Decimal("144.00"))
    later = pricing.quote(
        organization=organization, gpu_model=catalog.h100, region=catalog.west,
        node_count=1, starts_at=NEXT_HOUR + hours(48), ends_at=NEXT_HOUR + hours(58),
    )  # fmt: skip
    assert (later.price_source, later.total) == ("list", Decimal("120.00"))


def test_another_organizations_rate_does_not_apply(catalog, organization, other_organization):
    NegotiatedRate.objects.create(
        organization=other_organization, gpu_model=catalog.h100, region=None,
        price_per_gpu_hour=Decimal("0.50"), valid_from=NOW - hours(1), valid_until=NOW + hours(48),
    )  # fmt: skip
    quote = pricing.quote(
        organization=organization, gpu_model=catalog.h100, region=catalog.east,
        node_count=1, starts_at=NEXT_HOUR, ends_at=NEXT_HOUR + hours(1),
    )  # fmt: skip
    assert (quote.price_source, quote.total) == ("list", Decimal("16.00"))


def test_calendar_shades_show_the_first_booking():
    from capacity.availability import SHADES, Cell

    start = datetime(2026, 12, 1, tzinfo=UTC)
    cells = [Cell(start=start, free=free, capacity=12) for free in (0, 1, 3, 4, 7, 8, 11, 12)]
    none, few, some, many, every = SHADES
    assert [cell.shade for cell in cells] == [none, few, few, some, some, many, many, every]
    assert [cell.shade_name for cell in cells[:2]] == ["none", "few"]
    assert Cell(start=start, free=0, capacity=0).shade == none
