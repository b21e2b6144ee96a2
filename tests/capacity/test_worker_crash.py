"""A worker is killed (SIGKILL) in the middle of provisioning; another one finishes the job.

A real `celery worker` process on the configured broker (the on-disk one by default, Redis in
CI) and the test database. The filesystem transport removes a message when a worker takes it
and Redis gives an unacknowledged one back only after its visibility timeout, so the guarantee
is the reconcile sweep: a reservation stuck in provisioning is enqueued again, and the
driver's idempotency key makes the second attempt finish what the first began, once.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from capacity import lifecycle, provisioning
from capacity.models import Reservation, SimulatedCall
from capacity.tasks import provision
from portal.celery import app as celery_app

from .test_provisioning import scheduled

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db(transaction=True)


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"  # NAME is absolute: sqlite:////tmp/...
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def _worker(tmp_path: Path, name: str, latency: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": _database_url(),
        "TEST_BROKER_DIR": str(settings.CELERY_BROKER_DIR),
        "PROVISIONING_SIMULATED_LATENCY": str(latency),
    }
    with (tmp_path / f"{name}.log").open("w") as log:  # the child keeps its own copy
        return _popen(env, log, name)


def _popen(env: dict[str, str], log, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--pool",
            "solo",
            "--queues",
            settings.QUEUE_PROVISIONING,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{name}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_provisioning_survives_a_killed_worker(catalog, organization, owner, tmp_path, monkeypatch):
    reservation = scheduled(organization, owner, catalog)
    lifecycle.reservation_transition(
        reservation=reservation, to=Reservation.State.PROVISIONING, actor=None
    )
    monkeypatch.setattr(celery_app.conf, "task_always_eager", False)  # only the job goes out
    provision.apply_async(kwargs={"reservation_id": reservation.pk})
    key = f"provision:{reservation.public_id}"

    first = _worker(tmp_path, "first", latency=30)
    try:
        # The driver has counted the attempt and is now busy bringing the nodes up.
        _wait(
            lambda: SimulatedCall.objects.filter(key=key, attempts=1).exists(),
            60,
            "the first attempt",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    call = SimulatedCall.objects.get(key=key)
    assert (call.attempts, call.completions) == (1, 0)
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.PROVISIONING

    second = _worker(tmp_path, "second", latency=0)
    try:
        # Fifteen minutes on, the sweep finds the reservation stuck and enqueues it again.
        assert (
            provisioning.provisioning_reconcile(now=timezone.now() + timedelta(minutes=16))[
                "retried"
            ]
            == 1
        )
        _wait(
            lambda: Reservation.objects.get(pk=reservation.pk).state == Reservation.State.ACTIVE,
            60,
            "the second worker to finish",
        )
    finally:
        second.terminate()
        second.wait(timeout=30)
    call.refresh_from_db()
    assert (call.attempts, call.completions) == (2, 1)
