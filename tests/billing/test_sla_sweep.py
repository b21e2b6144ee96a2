"""The SLA credit sweep against the real localstripe: a credit whose task never ran (its
message lost while the broker was down, its retries used up) is granted by the sweep, once.

Blocks are H100 nodes at $16.00 a node-hour (see test_sla_credits.py): a 24-hour block of
2 nodes is $768.00, of 4 nodes $1,536.00."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from celery.exceptions import Retry
from django.conf import settings as django_settings

from billing import gateway, tasks
from billing.models import Refund, SlaCredit
from billing.services import sla
from capacity import incidents, operations, provisioning
from capacity.models import Incident, Reservation, SimulatedNode
from core.models import AuditEvent
from portal.celery import app
from tests.backoffice.conftest import make_staff

from .test_sla_credits import POLICY, credit_row, paid, start, stripe_refunds

pytestmark = pytest.mark.usefixtures("stripe_api")
S = Reservation.State
LATER = timedelta(minutes=16)  # past SLA_CREDIT_SWEEP_STALE (15 minutes)


@pytest.fixture(autouse=True)
def _policy(settings) -> None:
    settings.SLA_CREDIT_POLICY = POLICY


def lost(**kwargs: object) -> None:
    """SLA_CREDIT_HOOK whose message never reaches the worker (the broker was down)."""


@pytest.fixture
def messages_lost(settings) -> None:
    settings.SLA_CREDIT_HOOK = "tests.billing.test_sla_sweep.lost"


def sweep(at) -> int:
    with time_machine.travel(at, tick=False):
        return tasks.sweep_sla_credits.apply().get()


def test_a_pending_credit_left_by_an_outage_is_granted_by_the_sweep_once(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks, monkeypatch
):
    """Stripe away while the task paid the credit back, and its retries used up: the credit
    and its refund stay pending. The sweep sends that refund (the same one, by its idempotency
    key) and grants the credit; running again does nothing."""
    reservation, payment = paid(organization, owner, catalog, stripe_api)

    def unreachable(**kwargs):
        raise gateway.GatewayUnavailable("Stripe could not be reached.")

    with monkeypatch.context() as patch:
        patch.setattr(gateway, "refund_create", unreachable)
        with pytest.raises(Retry):
            start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=61))
    credit = SlaCredit.objects.get()
    assert (credit.status, credit.amount) == ("pending", Decimal("32.00"))
    assert list(Refund.objects.values_list("status", "amount")) == [("pending", Decimal("32.00"))]
    up = reservation.starts_at + timedelta(minutes=61)
    assert sweep(up + timedelta(minutes=14)) == 0  # its task may still be retrying
    assert sweep(up + LATER) == 1
    credit.refresh_from_db()
    assert credit_row(credit) == (
        "late_start", "start", 61, Decimal("4.0000"), Decimal("50.00"),
        Decimal("32.00"), Decimal("32.00"), "refund", "granted",
    )  # fmt: skip
    assert list(Refund.objects.values_list("status", "amount")) == [("succeeded", Decimal("32.00"))]
    assert stripe_refunds(payment) == [3200]
    assert sweep(up + LATER * 2) == 0
    assert stripe_refunds(payment) == [3200]
    assert AuditEvent.objects.filter(action="sla_credit.granted").count() == 1


def test_shortfalls_whose_messages_were_lost_are_measured_again_and_credited_once(
    catalog, organization, owner, stripe_api, django_capture_on_commit_callbacks, messages_lost
):
    """A 4-node block (no spare in east-a) up 61 minutes late, a node failed from +2 h to
    +5 h 30, released by staff 10 hours before its end: no message reached billing. Once the
    block is over, the sweep finds all three in its records and credits each once, exactly as
    the live triggers would have."""
    reservation, payment = paid(organization, owner, catalog, stripe_api, nodes=4)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=61))
    sick = reservation.allocations.order_by("node__hostname").first().node
    SimulatedNode.objects.update_or_create(hostname=sick.hostname, defaults={"fault": "GPU 3 lost"})
    with time_machine.travel(reservation.starts_at + timedelta(hours=2), tick=False):
        assert provisioning.provisioning_reconcile()["unhealthy"] == 1
    incident = Incident.objects.get(reservation=reservation, node=sick)
    ops = make_staff(superuser=True)
    with (
        time_machine.travel(reservation.starts_at + timedelta(hours=5, minutes=30), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        operations.incident_resolve(incident=incident, actor=ops, note="Node replaced.")
    released_at = reservation.ends_at - timedelta(hours=10)
    with (
        time_machine.travel(released_at, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        operations.reservation_release(reservation=reservation, actor=ops, reason="Rack work")
    reservation.refresh_from_db()
    assert (reservation.state, SlaCredit.objects.count()) == (S.COMPLETED, 0)
    assert sweep(released_at + timedelta(minutes=5)) == 0  # just ended: left for the task
    assert sweep(released_at + LATER) == 3
    credits = {c.cause: credit_row(c) for c in SlaCredit.objects.all()}
    assert credits == {
        # 2 hours begun x 4 nodes x $16.00 x 50%.
        "late_start": (
            "late_start", "start", 61, Decimal("8.0000"), Decimal("50.00"),
            Decimal("64.00"), Decimal("64.00"), "refund", "granted",
        ),
        # 3 h 30 of the failed node x $16.00 x 100%.
        "degraded": (
            "degraded", f"incident:{incident.pk}", 210, Decimal("3.5000"), Decimal("100.00"),
            Decimal("56.00"), Decimal("56.00"), "refund", "granted",
        ),
        # 10 hours x 4 nodes x $16.00 x 25%.
        "force_released": (
            "force_released", "release", 600, Decimal("40.0000"), Decimal("25.00"),
            Decimal("160.00"), Decimal("160.00"), "refund", "granted",
        ),
    }  # fmt: skip
    assert stripe_refunds(payment) == [5600, 6400, 16000]
    # Every later run within the window finds them credited.
    assert sweep(released_at + LATER * 2) == 0
    assert sweep(reservation.ends_at + timedelta(days=3)) == 0
    assert SlaCredit.objects.count() == 3
    assert stripe_refunds(payment) == [5600, 6400, 16000]


def test_the_sweep_looks_back_a_bounded_window_and_skips_what_earns_nothing(
    catalog, organization, owner, stripe_api, settings, django_capture_on_commit_callbacks,
    messages_lost,
):  # fmt: skip
    late, _ = paid(organization, owner, catalog, stripe_api)
    start(late, django_capture_on_commit_callbacks, late=timedelta(minutes=30))
    # Beside it, on the other cluster, a block that ran as sold: nothing to measure.
    on_time, _ = paid(organization, owner, catalog, stripe_api, nodes=4)
    start(on_time, django_capture_on_commit_callbacks)
    with time_machine.travel(late.ends_at, tick=False):
        assert provisioning.reservation_end_due() == 2
        for block in (late, on_time):
            provisioning.block_release(block.pk)
    assert set(Reservation.objects.values_list("state", flat=True)) == {S.COMPLETED}
    assert list(incidents.reservations_short(Reservation.objects.all())) == [late]
    settings.SLA_CREDIT_SWEEP_DAYS = 2
    # Ended more than 2 days ago: out of the window, never measured again.
    assert sla.sla_credits_due(now=late.ends_at + timedelta(days=2, minutes=1)) == []
    # 30 minutes late under a 31-minute grace earns nothing: nothing is handed on.
    settings.SLA_CREDIT_POLICY = {
        **POLICY,
        "late_start": {**POLICY["late_start"], "grace_minutes": 31},
    }
    assert sla.sla_credits_due(now=late.ends_at + timedelta(days=1)) == []
    settings.SLA_CREDIT_POLICY = POLICY
    assert sla.sla_credits_due(now=late.ends_at + timedelta(days=1)) == [
        sla.SlaDue(late.pk, "late_start", "start", 30)
    ]
    assert SlaCredit.objects.count() == 0  # finding is not granting


def test_the_sweep_runs_every_15_minutes_on_the_billing_queue():
    entry = django_settings.CELERY_BEAT_SCHEDULE["billing.sweep_sla_credits"]
    assert (entry["task"], entry["schedule"]) == ("billing.sweep_sla_credits", 900.0)
    assert app.amqp.router.route({}, "billing.sweep_sla_credits")["queue"].name == "billing"
