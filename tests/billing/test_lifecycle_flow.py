"""From payment to active to completed with a real (embedded) Celery worker on the test
broker, fast-forwarding a clock the test controls instead of sleeping."""

import time
from datetime import timedelta

import pytest
import time_machine
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.core import mail
from django.utils import timezone

from billing.services import payments
from capacity import tasks as capacity_tasks
from capacity.models import Reservation, SimulatedCall
from capacity.windows import ceil_hour
from portal.celery import app as celery_app

from .conftest import card, held_reservation, hours

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("stripe_api")]
S = Reservation.State


def _until(reservation: Reservation, wanted: str) -> None:
    deadline = time.monotonic() + 30
    while Reservation.objects.get(pk=reservation.pk).state != wanted:
        assert time.monotonic() < deadline, f"never reached {wanted}"
        time.sleep(0.1)


def test_paid_block_comes_up_on_time_warns_and_is_torn_down(
    catalog, organization, owner, stripe_api, monkeypatch
):
    start = ceil_hour(timezone.now()) + hours(2)
    with time_machine.travel(timezone.now(), tick=True) as clock:
        reservation = held_reservation(organization, owner, catalog, length=3, start=start)
        payments.payment_by_card_create(
            reservation=reservation,
            actor=owner,
            payment_method_id=card(stripe_api),
            attempt_token="f",
        )
        assert Reservation.objects.get(pk=reservation.pk).state == S.SCHEDULED
        monkeypatch.setattr(celery_app.conf, "task_always_eager", False)
        queues = [q.name for q in settings.CELERY_TASK_QUEUES]
        with start_worker(celery_app, perform_ping_check=False, queues=queues, shutdown_timeout=30):
            clock.move_to(start - timedelta(minutes=9))
            capacity_tasks.start_due.delay()
            _until(reservation, S.ACTIVE)
            # A 3-hour block hears a quarter of its length (45 min) before the end.
            clock.move_to(start + hours(2) + timedelta(minutes=15, seconds=30))
            capacity_tasks.remind.delay()
            deadline = time.monotonic() + 30
            while "45m" not in Reservation.objects.get(pk=reservation.pk).reminders_sent:
                assert time.monotonic() < deadline, "no reminder"
                time.sleep(0.1)
            clock.move_to(start + hours(3))
            capacity_tasks.end_due.delay()
            _until(reservation, S.COMPLETED)
            deadline = time.monotonic() + 10
            while len(mail.outbox) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
    assert [(c.key, c.completions) for c in SimulatedCall.objects.order_by("key")] == [
        (f"deprovision:{reservation.public_id}", 1),
        (f"provision:{reservation.public_id}", 1),
    ]
    assert sorted(m.subject for m in mail.outbox) == sorted(
        [
            f"Reservation {reservation.public_id} is confirmed",
            f"Receipt for reservation {reservation.public_id}",
            f"Your GPU block {reservation.public_id} is ready",
            f"{reservation.public_id} ends in 44 min",
            f"{reservation.public_id} has ended",
        ]
    )
