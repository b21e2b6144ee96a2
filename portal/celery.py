"""The Celery application. Configuration comes from Django settings (the CELERY_ namespace)."""

import logging
import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_init
from django.db import transaction
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.local")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def ensure_broker_folders() -> None:
    """The filesystem transport needs its folders to exist before anyone sends or receives."""
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if options.get(key):
            Path(options[key]).mkdir(parents=True, exist_ok=True)


@app.on_after_configure.connect
def _prepare_broker(sender: Celery, **kwargs: object) -> None:
    ensure_broker_folders()


@worker_init.connect
def _prepare_worker_broker(**kwargs: object) -> None:
    ensure_broker_folders()


def enqueue_after_commit(task_name: str, **kwargs: object) -> None:
    """Send a task by name once the surrounding transaction commits.

    If the broker is down the send is logged and dropped: every state it would advance is
    already committed, and the periodic sweeps (hold expiry, start and end, reconcile, webhook
    retry, billing settlement) find that state and do the work once the broker is back.
    """

    def send() -> None:
        try:
            app.signature(task_name, kwargs=kwargs).apply_async()
        except OperationalError as exc:
            logger.warning("broker unavailable, %s left for the sweep: %s", task_name, exc)

    transaction.on_commit(send)
