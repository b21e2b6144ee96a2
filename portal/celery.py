"""The Celery application. Configuration comes from Django settings (the CELERY_ namespace)."""

import logging
import os
from contextvars import Token
from pathlib import Path

from celery import Celery, Task
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_init

from core import context, metrics  # noqa: F401 - metrics connects its task hooks on import

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


@worker_init.connect
def _serve_worker_metrics(**kwargs: object) -> None:
    """WORKER_METRICS_PORT: the worker's task metrics for Prometheus on that port (the web's
    /metrics shows the web processes' own). With PROMETHEUS_MULTIPROC_DIR set, the pool's
    processes write their figures there and this adds them up."""
    port = os.environ.get("WORKER_METRICS_PORT")
    if not port:
        return
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    # Loopback unless told otherwise (a container sets WORKER_METRICS_ADDR=0.0.0.0).
    address = os.environ.get("WORKER_METRICS_ADDR", "127.0.0.1")
    start_http_server(int(port), addr=address, registry=registry)


# The request id follows a request into the tasks it sends (and theirs), so one id finds the
# page view, its log lines, the tasks' log lines and the audit events they all wrote. Celery's
# signals are its hooks for this; they carry context and never steer the work.
REQUEST_ID_HEADER = "hyperblock_request_id"
_adopted: dict[str, Token[str]] = {}


@before_task_publish.connect
def _send_request_id(headers: dict, **kwargs: object) -> None:
    rid = context.request_id.get()
    if rid != "-":
        headers.setdefault(REQUEST_ID_HEADER, rid)


@task_prerun.connect
def _adopt_request_id(task_id: str, task: Task, **kwargs: object) -> None:
    rid = getattr(task.request, REQUEST_ID_HEADER, None)
    if isinstance(rid, str) and rid:
        _adopted[task_id] = context.request_id.set(rid)


@task_postrun.connect
def _drop_request_id(task_id: str, **kwargs: object) -> None:
    token = _adopted.pop(task_id, None)
    if token is not None:
        context.request_id.reset(token)
