import smtplib

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail


@shared_task(
    name="accounts.send_email",
    autoretry_for=(smtplib.SMTPException, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def send_email(*, to: str, subject: str, body: str) -> None:
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [to])


@shared_task(name="accounts.clean_login_attempts")
def clean_login_attempts() -> int:
    """Delete sign-in failures older than the cool-off; safe to run any number of times."""
    from .services import login_attempts_clean

    return login_attempts_clean()
