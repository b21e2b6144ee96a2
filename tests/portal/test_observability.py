"""Structured logs with the request id (also in the tasks a request sends), secrets masked in
every log line, and the Prometheus metrics."""

import io
import json
import logging
import re
import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.test import Client
from django.urls import reverse
from prometheus_client import REGISTRY

from billing.models import WebhookEvent
from capacity.models import Reservation
from core import context
from core.logging import JsonFormatter, RedactSecretsFilter, RequestContextFilter, redact
from portal.celery import app as celery_app
from tests.billing.conftest import held_reservation
from tests.capacity.conftest import catalog  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def captured():
    """A handler set up as LOGGING sets up the console, writing JSON into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("hyperblock.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_logging_settings_wire_the_filters_and_the_json_format():
    handler = settings.LOGGING["handlers"]["console"]
    assert handler["filters"] == ["request_context", "redact_secrets"]
    assert settings.LOGGING["formatters"]["json"] == {"()": "core.logging.JsonFormatter"}
    assert settings.CELERY_WORKER_HIJACK_ROOT_LOGGER is False


def test_a_json_line_has_the_request_id(captured):
    logger, stream = captured
    token = context.request_id.set("req-12345678")
    try:
        logger.info("reservation %s paid", "rsv_abc")
    finally:
        context.request_id.reset(token)
    [line] = _lines(stream)
    assert set(line) == {"time", "level", "logger", "message", "request_id"}
    assert (line["level"], line["logger"], line["message"], line["request_id"]) == (
        "INFO",
        "hyperblock.test",
        "reservation rsv_abc paid",
        "req-12345678",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        ("hbk_abcd1234efgh_" + "s" * 38, "hbk_abcd[redacted]"),
        ("sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc", "sk_test_[redacted]"),
        ("sk_live_" + "51Habc", "sk_live_[redacted]"),
        ("rk_live_" + "51Habc", "rk_live_[redacted]"),
        ("whsec_" + "abc123/+=", "whsec_[redacted]"),
        ("pi_3Nabc_secret_" + "XyZ789", "pi_3Nabc_secret_[redacted]"),
        ("seti_1Nabc_secret_" + "XyZ789", "seti_1Nabc_secret_[redacted]"),
        ("Bearer " + "eyJhbGciOi.J9x-y_z", "Bearer [redacted]"),
    ],
)
def test_secrets_are_masked_in_messages_arguments_and_tracebacks(captured, secret, shown):
    logger, stream = captured
    logger.warning("calling with %s failed", secret)
    try:
        raise ValueError(f"refused {secret}")
    except ValueError:
        logger.exception("and then")
    first, second = _lines(stream)
    assert first["message"] == f"calling with {shown} failed"
    assert f"refused {shown}" in second["exception"]
    assert secret not in stream.getvalue()


def test_ordinary_text_is_left_alone():
    text = "rsv_1a2b3c paid by pm_card_visa; key hbk_ on sk_ prefix"
    assert redact(text) == text


seen_by_probe: list[str] = []


@celery_app.task(name="tests.request_id_probe")
def request_id_probe() -> None:
    seen_by_probe.append(context.request_id.get())


def test_a_task_sent_during_a_request_runs_under_its_request_id(monkeypatch):
    """Through a real worker: the id travels in the message, the task runs (and logs, and
    audits) under it, and the worker forgets it afterwards. Counted in the task metrics too."""
    monkeypatch.setattr(celery_app.conf, "task_always_eager", False)
    seen_by_probe.clear()
    before = REGISTRY.get_sample_value(
        "hyperblock_celery_tasks_total", {"task": "tests.request_id_probe", "outcome": "success"}
    )
    queues = [q.name for q in settings.CELERY_TASK_QUEUES]
    with start_worker(celery_app, perform_ping_check=False, queues=queues, shutdown_timeout=10):
        token = context.request_id.set("req-abcdef12")
        try:
            request_id_probe.delay()
        finally:
            context.request_id.reset(token)
        request_id_probe.delay()  # sent outside any request
        deadline = time.monotonic() + 20
        while len(seen_by_probe) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert seen_by_probe == ["req-abcdef12", "-"]
    after = REGISTRY.get_sample_value(
        "hyperblock_celery_tasks_total", {"task": "tests.request_id_probe", "outcome": "success"}
    )
    assert after - (before or 0) == 2


# --- Metrics ---------------------------------------------------------------------------------


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)\n"
    match = re.search(pattern, text)
    assert match, f"{name}{{{labels}}} not in the metrics"
    return float(match.group(1))


def test_metrics_show_requests_tasks_reservations_and_webhooks(catalog, organization, owner):
    first = held_reservation(organization, owner, catalog, nodes=1)
    held_reservation(organization, owner, catalog, nodes=1)
    Reservation.objects.filter(pk=first.pk).update(state=Reservation.State.SCHEDULED)
    Client().get(reverse("healthz"))
    WebhookEvent.objects.create(stripe_event_id="evt_waiting", type="charge.refunded", payload={})
    response = Client(REMOTE_ADDR="127.0.0.1").get(reverse("metrics"))
    assert response.status_code == 200
    text = response.text
    assert (
        _sample(text, "hyperblock_reservations", 'state="held"')
        == Reservation.objects.filter(state="held").count()
    )
    assert _sample(text, "hyperblock_webhook_backlog_events") == 1.0
    assert _sample(text, "hyperblock_webhook_oldest_unprocessed_seconds") < 60
    assert "django_http_requests_total_by_view_transport_method_total" in text
    assert "# TYPE hyperblock_celery_task_seconds histogram" in text
    assert "# TYPE hyperblock_webhook_lag_seconds histogram" in text


def test_metrics_are_not_for_everyone(settings):
    assert Client(REMOTE_ADDR="203.0.113.9").get(reverse("metrics")).status_code == 404
    settings.METRICS_TOKEN = "scrape-token-123"
    assert Client(REMOTE_ADDR="127.0.0.1").get(reverse("metrics")).status_code == 404
    wrong = Client().get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 404
    right = Client().get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer scrape-token-123")
    assert right.status_code == 200
