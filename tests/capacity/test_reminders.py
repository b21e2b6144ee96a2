"""Reminders that a block ends soon follow the block's real length, go out once each, and say
the time actually left and the end."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.utils import timezone

from capacity import lifecycle, provisioning, reminders, tasks
from capacity.models import Reservation

from .conftest import NEXT_HOUR, NOW, hours
from .test_reservations import reserve
from .test_start_now import start_now

S = Reservation.State
pytestmark = pytest.mark.django_db
SWEEP = timedelta(minutes=5)  # the beat schedule's period for capacity.remind


def active(reservation: Reservation, django_capture_on_commit_callbacks) -> Reservation:
    lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    reservation.refresh_from_db()
    assert reservation.state == S.ACTIVE
    mail.outbox.clear()
    return reservation


def sweep_to_the_end(reservation, frozen_clock, capture) -> list[tuple[datetime, str, str]]:
    """Run the reminder sweep every 5 minutes from 20 seconds after the start to the end, twice
    each time (a duplicate beat), and return (when, subject, body) for every e-mail sent."""
    sent = []
    at = reservation.starts_at + timedelta(seconds=20)
    while at < reservation.ends_at:
        frozen_clock.move_to(at)
        with capture(execute=True):
            tasks.remind()
            tasks.remind()
        sent += [(timezone.now(), m.subject, m.body) for m in mail.outbox]
        mail.outbox.clear()
        at += SWEEP
    return sent


@pytest.mark.parametrize(
    ("length", "leads"),
    [
        (hours(1), [timedelta(minutes=15)]),
        (hours(4), [hours(1)]),
        (hours(30), [timedelta(hours=7, minutes=30), hours(1)]),
        (hours(7 * 24), [hours(24), hours(1)]),
    ],
)
def test_no_reminder_comes_before_three_quarters_of_the_block_have_run(length, leads):
    assert reminders.reminder_leads(length) == leads


def test_a_four_hour_start_now_block_hears_once_an_hour_before_its_end(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = active(
        start_now(organization, owner, catalog, length=4), django_capture_on_commit_callbacks
    )
    assert (reservation.starts_at, reservation.ends_at) == (NOW, NOW + hours(4))  # 09:30-13:30
    sent = sweep_to_the_end(reservation, frozen_clock, django_capture_on_commit_callbacks)
    assert [(when, subject) for when, subject, _ in sent] == [
        (datetime(2026, 12, 1, 12, 30, 20, tzinfo=UTC), f"{reservation.public_id} ends in 59 min")
    ]
    assert (
        f"Your block {reservation.public_id} (2 × H100 in US East) ends in 59 min, "
        "at Tue 1 Dec 2026, 13:30 UTC."
    ) in sent[0][2]
    assert Reservation.objects.get(pk=reservation.pk).reminders_sent == ["1h"]


def test_a_thirty_hour_block_hears_after_three_quarters_and_an_hour_before_the_end(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = active(
        reserve(organization, owner, catalog, length=30), django_capture_on_commit_callbacks
    )
    sent = sweep_to_the_end(reservation, frozen_clock, django_capture_on_commit_callbacks)
    rid = reservation.public_id
    assert [(when, subject) for when, subject, _ in sent] == [
        (datetime(2026, 12, 2, 8, 30, 20, tzinfo=UTC), f"{rid} ends in 7 h 29 min"),
        (datetime(2026, 12, 2, 15, 0, 20, tzinfo=UTC), f"{rid} ends in 59 min"),
    ]
    assert all("at Wed 2 Dec 2026, 16:00 UTC." in body for _, _, body in sent)
    assert Reservation.objects.get(pk=reservation.pk).reminders_sent == ["1h", "7h30m"]


def test_a_seven_day_block_hears_a_day_and_an_hour_before_its_end(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = active(
        reserve(organization, owner, catalog, length=7 * 24), django_capture_on_commit_callbacks
    )
    sent = sweep_to_the_end(reservation, frozen_clock, django_capture_on_commit_callbacks)
    rid = reservation.public_id
    assert [(when, subject) for when, subject, _ in sent] == [
        (datetime(2026, 12, 7, 10, 0, 20, tzinfo=UTC), f"{rid} ends in 23 h 59 min"),
        (datetime(2026, 12, 8, 9, 0, 20, tzinfo=UTC), f"{rid} ends in 59 min"),
    ]
    assert all("at Tue 8 Dec 2026, 10:00 UTC." in body for _, _, body in sent)


def test_a_late_sweep_sends_only_the_nearest_reminder_with_the_time_really_left(
    catalog, organization, owner, frozen_clock, django_capture_on_commit_callbacks
):
    reservation = active(
        reserve(organization, owner, catalog, length=7 * 24), django_capture_on_commit_callbacks
    )
    frozen_clock.move_to(NEXT_HOUR + hours(7 * 24) - timedelta(minutes=30))  # beat was down
    with django_capture_on_commit_callbacks(execute=True):
        assert reminders.reminders_send() == 1
        assert reminders.reminders_send() == 0
    assert [m.subject for m in mail.outbox] == [f"{reservation.public_id} ends in 30 min"]
    assert Reservation.objects.get(pk=reservation.pk).reminders_sent == ["1h", "24h"]


@pytest.mark.parametrize(
    ("left", "label"),
    [
        (timedelta(days=2, hours=4, minutes=10), "2 days 4 h"),
        (timedelta(hours=23, minutes=59, seconds=59), "23 h 59 min"),
        (hours(1), "1 h"),
        (timedelta(minutes=45, seconds=30), "45 min"),
        (timedelta(seconds=20), "less than a minute"),
    ],
)
def test_the_time_left_is_rounded_down_to_the_minute(left, label):
    assert reminders.time_left_label(left) == label
