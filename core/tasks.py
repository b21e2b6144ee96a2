"""Work the ground sends through Celery: after-commit enqueueing and the e-mail queue."""

import logging
import smtplib

from celery import current_app, shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)


def enqueue_after_commit(task_name: str, **kwargs: object) -> None:
    """Send a task by name once the surrounding transaction commits.

    If the broker is down the send is logged and dropped: every state it would advance is
    already committed, and the periodic sweeps (hold expiry, start and end, reconcile, webhook
    retry, billing settlement) find that state and do the work once the broker is back.
    """

    def send() -> None:
        try:
            current_app.signature(task_name, kwargs=kwargs).apply_async()
        except OperationalError as exc:
            logger.warning("broker unavailable, %s left for the sweep: %s", task_name, exc)

    transaction.on_commit(send)


@shared_task(
    name="core.send_email",
    autoretry_for=(smtplib.SMTPException, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def send_email(*, to: str, subject: str, body: str) -> None:
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [to])
