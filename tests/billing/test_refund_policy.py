"""The refund policy is shown before paying, in this block's dates and money, and says exactly
what a cancellation at those times refunds."""

import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from billing.services import payments
from capacity import cancellation
from capacity.windows import ceil_hour
from tests.conftest import client_for

from .conftest import VISA, card, held_reservation

pytestmark = pytest.mark.usefixtures("stripe_api")

STEP = re.compile(
    r'data-testid="refund-step" data-percent="(\d+)" data-amount="([\d.]+)"'
    r'(?: data-until="([^"]+)")?'
)


def shown_steps(html: str) -> list[tuple[int, Decimal, datetime | None]]:
    return [
        (int(percent), Decimal(amount), datetime.fromisoformat(until) if until else None)
        for percent, amount, until in STEP.findall(html)
    ]


def pay(reservation, owner, stripe_api) -> None:
    payment = payments.payment_by_card_create(
        reservation=reservation,
        actor=owner,
        payment_method_id=card(stripe_api, VISA),
        attempt_token="refund-policy",
    )
    assert payment.status == "succeeded"
    reservation.refresh_from_db()


def test_pay_page_shows_the_refunds_a_cancellation_then_gives(
    catalog, organization, owner, stripe_api
):
    start = ceil_hour(timezone.now()) + timedelta(days=10)
    reservation = held_reservation(organization, owner, catalog, start=start)
    page = client_for(owner).get(reverse("pay", args=[organization.slug, reservation.public_id]))
    html = page.content.decode()
    week_ahead = start - timedelta(days=7)
    assert shown_steps(html) == [
        (100, Decimal("768.00"), week_ahead),
        (50, Decimal("384.00"), None),
        (0, Decimal("0.00"), None),
    ]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert f"Until {week_ahead:%a %-d %b %Y, %H:%M} UTC $768.00 (100%)" in text
    assert f"After {week_ahead:%a %-d %b %Y, %H:%M} UTC, before the start $384.00 (50%)" in text
    assert f"From the start, {start:%a %-d %b %Y, %H:%M} UTC None" in text

    pay(reservation, owner, stripe_api)
    # A cancellation at each edge of each span refunds what the page said.
    for moment, (_percent, amount, _until) in [
        (week_ahead, shown_steps(html)[0]),
        (week_ahead + timedelta(seconds=1), shown_steps(html)[1]),
        (start - timedelta(seconds=1), shown_steps(html)[1]),
        (start, shown_steps(html)[2]),
    ]:
        assert cancellation.refund_amount(reservation, moment) == amount, moment
    with time_machine.travel(week_ahead, tick=False):
        quote = cancellation.cancellation_quote(reservation)
        assert (quote.amount, quote.percent) == (Decimal("768.00"), 100)
    with time_machine.travel(start - timedelta(minutes=1), tick=False):
        quote = cancellation.cancellation_quote(reservation)
        assert (quote.amount, quote.percent) == (Decimal("384.00"), 50)


def test_within_a_week_only_the_half_refund_is_left(catalog, organization, owner, stripe_api):
    start = ceil_hour(timezone.now()) + timedelta(days=3)
    reservation = held_reservation(organization, owner, catalog, start=start, length=5)
    html = client_for(owner).get(reverse("pay", args=[organization.slug, reservation.public_id]))
    steps = shown_steps(html.content.decode())
    assert steps == [(50, Decimal("80.00"), None), (0, Decimal("0.00"), None)]
    pay(reservation, owner, stripe_api)
    assert cancellation.refund_amount(reservation) == Decimal("80.00")


def test_the_quote_shows_the_policy_before_reserving(catalog, organization, owner):
    start = ceil_hour(timezone.now()) + timedelta(days=9)
    page = client_for(owner).get(
        reverse("reservation-new", args=[organization.slug]),
        {
            "gpu_model": "h100",
            "region": "us-east",
            "node_count": 1,
            "duration_hours": 3,
            "starts_at": start.strftime("%Y-%m-%dT%H:%M"),
        },
    )
    html = page.content.decode()
    assert shown_steps(html) == [
        (100, Decimal("48.00"), start - timedelta(days=7)),
        (50, Decimal("24.00"), None),
        (0, Decimal("0.00"), None),
    ]


def test_a_block_starting_on_payment_says_it_cannot_be_refunded(catalog, organization, owner):
    page = client_for(owner).get(
        reverse("reservation-new", args=[organization.slug]),
        {"gpu_model": "h100", "region": "us-east", "node_count": 1, "duration_hours": 3},
    )
    html = page.content.decode()
    assert shown_steps(html) == []
    assert "once paid it can no longer be canceled or refunded" in html


def test_the_schedule_leaves_out_spans_already_past():
    start = timezone.now().replace(microsecond=0) + timedelta(days=7)
    schedule = cancellation.refund_schedule(
        starts_at=start, paid=Decimal("100.01"), currency="usd", now=start - timedelta(days=7)
    )
    assert [(s.since, s.until, s.percent, s.amount) for s in schedule.steps] == [
        (None, start - timedelta(days=7), 100, Decimal("100.01")),
        (start - timedelta(days=7), None, 50, Decimal("50.01")),  # 50.005, half up
    ]
    later = cancellation.refund_schedule(
        starts_at=start, paid=Decimal("100.01"), currency="usd", now=start - timedelta(days=1)
    )
    assert [(s.since, s.until, s.percent) for s in later.steps] == [(None, None, 50)]
    after = cancellation.refund_schedule(
        starts_at=start, paid=Decimal("100.01"), currency="usd", now=start
    )
    assert after.steps == ()
