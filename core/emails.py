"""Transactional e-mail: rendered at once, sent by the e-mail queue after the commit.

Every e-mail is plain text, so what people typed (an organization called `AT&T <Labs>`) is
written as typed: templates render with autoescape off. A message's subject is the first line
of its template, rendered on its own and folded onto one line, so a line break in a name cannot
end the subject early or reach the header."""

import re

from django.conf import settings
from django.template import Context, engines
from django.template.base import Template

_LOAD_TAG = re.compile(r"{%\s*load\s[^%]*%}")


def _parts(template: str) -> tuple[Template, Template]:
    """The subject line and the body of templates/emails/<template>.txt, compiled apart.
    Libraries loaded anywhere in the file are loaded for both."""
    engine = engines["django"].engine  # type: ignore[attr-defined]
    source = engine.get_template(f"emails/{template}.txt").source
    subject, _, body = source.partition("\n")
    loads = "".join(_LOAD_TAG.findall(source))
    return engine.from_string(loads + subject), engine.from_string(loads + body)


def render_email(*, template: str, context: dict) -> tuple[str, str]:
    """The subject (one line) and body of an e-mail, unescaped."""
    full_context = {**context, "site_name": settings.SITE_NAME, "site_url": settings.SITE_URL}
    subject_template, body_template = _parts(template)
    subject = subject_template.render(Context(full_context, autoescape=False))
    body = body_template.render(Context(full_context, autoescape=False))
    return " ".join(subject.split()), body.lstrip("\n")


def queue_email(*, to: str, template: str, context: dict) -> None:
    """Render templates/emails/<template>.txt (first line is the subject) and queue it.

    Sending happens in a task on the e-mail queue once the surrounding transaction commits, so a
    rolled-back change never mails anyone and a slow mail server never slows a request.
    """
    from .tasks import send_email

    subject, body = render_email(template=template, context=context)
    # celery-types does not know Task.delay_on_commit (Celery 5.4).
    send_email.delay_on_commit(to=to, subject=subject, body=body)  # type: ignore[attr-defined]
