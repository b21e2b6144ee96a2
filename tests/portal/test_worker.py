"""A real `celery worker` process on the configured broker (on-disk by default, Redis in CI)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from core.tasks import send_email
from portal.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "TEST_BROKER_DIR": str(settings.CELERY_BROKER_DIR),
        "EMAIL_URL": f"filemail:///{outbox}",  # the fourth slash makes the path absolute
    }


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as log_file:
        return subprocess.Popen(
            [
                # Every queue, as `make run` does: a message must reach exactly one of them.
                sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_a_task_queued_before_the_worker_starts_is_delivered_once(
    worker_env, monkeypatch, tmp_path
):
    monkeypatch.setattr(celery_app.conf, "task_always_eager", False)
    celery_app.control.purge()  # whatever earlier tests left on the broker
    send_email.apply_async(
        kwargs={"to": "ops@example.com", "subject": "Queued first", "body": "Hello from the queue."}
    )
    log = tmp_path / "worker.log"
    worker = _start_worker(worker_env, log)
    outbox = Path(worker_env["EMAIL_URL"].removeprefix("filemail:///"))
    try:
        deadline = time.monotonic() + 30
        while not list(outbox.iterdir()) and time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(1)  # a duplicate delivery would land within this second
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    files = list(outbox.iterdir())
    assert len(files) == 1
    message = files[0].read_text()
    assert "Subject: Queued first" in message
    assert "To: ops@example.com" in message
    assert "Hello from the queue." in message


def test_e_mail_queued_under_the_former_task_name_still_goes_out(mailoutbox):
    """A message on the broker named accounts.send_email (the task before it moved to core)
    is handed to core's task and sent once."""
    celery_app.signature(
        "accounts.send_email",
        kwargs={"to": "ops@example.com", "subject": "Queued before", "body": "Still sent."},
    ).apply_async()
    assert [(m.to, m.subject, m.body) for m in mailoutbox] == [
        (["ops@example.com"], "Queued before", "Still sent.")
    ]
    assert celery_app.conf.task_routes["accounts.send_email"] == {"queue": "email"}
