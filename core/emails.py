"""Transactional e-mail: rendered at once, sent by the e-mail queue after the commit."""

from django.conf import settings
from django.template.loader import render_to_string


def queue_email(*, to: str, template: str, context: dict) -> None:
    """Render templates/emails/<template>.txt (first line is the subject) and queue it.

    Sending happens in a task on the e-mail queue once the surrounding transaction commits, so a
    rolled-back change never mails anyone and a slow mail server never slows a request.
    """
    from .tasks import send_email

    full_context = {**context, "site_name": settings.SITE_NAME, "site_url": settings.SITE_URL}
    subject, _, body = render_to_string(f"emails/{template}.txt", full_context).partition("\n")
    # celery-types does not know Task.delay_on_commit (Celery 5.4).
    send_email.delay_on_commit(to=to, subject=subject.strip(), body=body.lstrip("\n"))  # type: ignore[attr-defined]
