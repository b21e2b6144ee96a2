from celery import shared_task

from core.tasks import send_email

from .services.users import login_attempts_clean


@shared_task(name="accounts.clean_login_attempts")
def clean_login_attempts() -> int:
    """Delete sign-in failures older than the cool-off; safe to run any number of times."""
    return login_attempts_clean()


@shared_task(name="accounts.send_email")
def send_email_queued_before_core(*, to: str, subject: str, body: str) -> None:
    """E-mail queued under the task's former name (before it moved to core) still goes out:
    messages already on the broker, and those sent by a web process of the release before
    during a rolling deploy. It hands each one to core's task; remove once none can be left."""
    send_email.delay(to=to, subject=subject, body=body)
