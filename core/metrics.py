"""Prometheus metrics of our own, beside django-prometheus's request metrics.

Counters and histograms live in each process. With PROMETHEUS_MULTIPROC_DIR set (gunicorn with
several workers, Celery's prefork pool; see docs/deployment.md) every process writes them to
that folder and /metrics adds them up; without it, /metrics shows the serving process's own.
Figures read from the database (reservations by state, the webhook backlog) are taken when
/metrics is scraped (portal.views.metrics)."""

import time

from celery import Task
from celery.signals import task_postrun, task_prerun
from prometheus_client import Counter, Histogram

TASKS = Counter(
    "hyperblock_celery_tasks_total",
    "Celery tasks run, by task name and outcome (success, failure, retry, ignored, rejected).",
    ["task", "outcome"],
)
TASK_SECONDS = Histogram(
    "hyperblock_celery_task_seconds",
    "How long Celery tasks ran, by task name.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WEBHOOK_LAG = Histogram(
    "hyperblock_webhook_lag_seconds",
    "From a Stripe event's arrival to the end of its processing.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)

_started: dict[str, float] = {}


# Celery's signals are its instrumentation hooks; they measure and never steer the work.
@task_prerun.connect
def _task_started(task_id: str, **kwargs: object) -> None:
    _started[task_id] = time.monotonic()


@task_postrun.connect
def _task_finished(task_id: str, task: Task, state: str | None = None, **kwargs: object) -> None:
    began = _started.pop(task_id, None)
    if began is not None:
        TASK_SECONDS.labels(task.name).observe(time.monotonic() - began)
    TASKS.labels(task.name, (state or "unknown").lower()).inc()
