"""The production processes, started exactly as the containers start them, on this machine.

Every service of compose.yaml runs a `bin/container` subcommand. Here the same subcommands run
as subprocesses with `portal.settings.production` against the local PostgreSQL (a throwaway
database) and Redis (a database number nobody else uses): migrate and collectstatic, then
gunicorn, a worker for the email queue and beat. The probes Docker runs must pass, gunicorn must
answer health, readiness and a collected static file, a task sent to the email queue must be
run by that worker and a task for another queue left alone, and every process must stop cleanly
on SIGTERM, as `docker stop` sends it.
"""

import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlsplit

import psycopg
import pytest
import redis
from django.conf import settings
from psycopg import sql

from portal.celery import app as celery_app

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = str(ROOT / "bin" / "container")
HOST = "console.example.test"
# What the TLS-terminating load balancer adds; production redirects anything else to HTTPS.
THROUGH_PROXY = {"Host": HOST, "X-Forwarded-Proto": "https"}
CLAIM_KEY = "hyperblock:production-stack-test"
START_TIMEOUT = 30
STOP_TIMEOUT = 30


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server the suite runs on, dropped afterwards."""
    config = settings.DATABASES["default"]
    if config["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")
    server = {
        "host": config["HOST"] or "127.0.0.1",
        "port": int(config["PORT"] or 5432),
        "user": config["USER"],
        "password": config["PASSWORD"] or None,
    }
    name = f"hb_stack_{secrets.token_hex(4)}"
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    credentials = quote(server["user"], safe="")
    if server["password"]:
        credentials += ":" + quote(server["password"], safe="")
    yield f"postgres://{credentials}@{server['host']}:{server['port']}/{name}"
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A Redis database number of our own on the suite's Redis, emptied afterwards.

    The queues have fixed names, so sharing a database with another run (or with the rest of the
    suite on db 0) would let its workers take our tasks. A database is ours when our claim key is
    the only key in it; setting the key with NX keeps two runs from claiming the same one.
    """
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith("redis://"):
        pytest.skip("needs Redis: set CELERY_BROKER_URL=redis://... (.ci/run always does)")
    token = uuid.uuid4().hex
    for number in range(15, 0, -1):
        ours = urlsplit(url)._replace(path=f"/{number}").geturl()
        client = redis.Redis.from_url(ours)  # the URL's database number wins over db=
        if client.set(CLAIM_KEY, token, nx=True, ex=600):
            if client.dbsize() == 1:
                break
            client.delete(CLAIM_KEY)
        client.close()
    else:
        pytest.skip("every Redis database from 1 to 15 is in use")
    yield ours
    client.flushdb()
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@dataclass
class Stack:
    env: dict[str, str]
    port: int
    logs: Path
    outbox: Path
    migrated: str = ""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, *args: str, stdout: IO | int = subprocess.PIPE) -> subprocess.Popen:
        """`bin/container ARGS` with the container's environment; output and errors together."""
        return subprocess.Popen(
            [CONTAINER, *args], cwd=ROOT, env=self.env, stdout=stdout,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip

    def run(self, *args: str, timeout: float = 120) -> tuple[int, str]:
        process = self.spawn(*args)
        output = process.communicate(timeout=timeout)[0]
        return process.returncode, output

    def start(self, name: str, *args: str) -> None:
        with (self.logs / f"{name}.log").open("w") as log:
            self.processes[name] = self.spawn(*args, stdout=log)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def request(self, path: str, headers: dict[str, str]) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def stop(self) -> dict[str, int | None]:
        """SIGTERM, as `docker stop` does; whatever is still running after the wait is killed."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                codes[name] = None
            # Gunicorn and Celery fork workers into the process's own session.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        return codes


def wait_until(condition, what: str, stack: Stack, *, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for name, process in stack.processes.items():
            assert process.poll() is None, (
                f"{name} exited while waiting for {what}:\n" + (stack.log(name)[-4000:])
            )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def answers(stack: Stack, path: str) -> bool:
    try:
        return stack.request(path, THROUGH_PROXY).status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(broker_url, database_url, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    outbox = tmp / "outbox"
    outbox.mkdir()
    port = free_port()
    # The image installs the runtime dependencies only, and brotli is not one of them (here it
    # comes with a development tool). Whitenoise compresses with brotli whenever it can import
    # it, which costs a minute of CPU on the API docs' bundles; hidden, collectstatic compresses
    # with gzip alone, as it does in the image.
    no_brotli = tmp / "no-brotli"
    no_brotli.mkdir()
    (no_brotli / "brotli.py").write_text('raise ImportError("not installed in the image")\n')
    # Only what a container is given: nothing from the test settings or the developer's shell.
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key in {"HOME", "LANG", "LC_ALL", "TMPDIR", "TZ"}
    }
    env = {
        **inherited,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(no_brotli),
        "DJANGO_SETTINGS_MODULE": "portal.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "CACHE_URL": broker_url,
        "EMAIL_URL": f"filemail:///{outbox}",  # the fourth slash makes the path absolute
        "SITE_URL": f"https://{HOST}",
        "PORT": str(port),
        "WEB_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "WORKER_CONCURRENCY": "1",
        "BEAT_SCHEDULE_FILE": str(tmp / "beat" / "celerybeat-schedule"),
        "DJANGO_STATIC_ROOT": str(tmp / "static"),
    }
    stack = Stack(env=env, port=port, logs=tmp, outbox=outbox)

    # What the image build and the one-shot migrate service do; neither needs the other.
    collect = stack.spawn("collectstatic")
    migrate_code, stack.migrated = stack.run("migrate")
    collected = collect.communicate(timeout=120)[0]
    assert migrate_code == 0, stack.migrated
    assert collect.returncode == 0, collected

    stack.start("web", "web")
    stack.start("worker-email", "worker", "email")
    stack.start("beat", "beat")
    try:
        wait_until(lambda: answers(stack, "/healthz"), "gunicorn", stack)
        ready = f"email@{socket.gethostname()} ready."  # the node name bin/container gives it
        wait_until(lambda: ready in stack.log("worker-email"), "the email worker", stack)
        yield stack
    finally:
        stack.stop()


def test_migrate_checks_the_deployment_then_migrates(stack):
    checked, _, migrated = stack.migrated.partition("Operations to perform:")
    assert checked.startswith("System check identified no issues"), stack.migrated
    # The exclusion constraint that keeps a node out of two overlapping blocks, with btree_gist.
    assert "Applying capacity.0002_allocation_no_overlap... OK" in migrated


def test_health_and_readiness_answer_through_gunicorn(stack):
    health = stack.request("/healthz", THROUGH_PROXY)
    assert (health.status, json.loads(health.body)) == (200, {"status": "ok"})
    ready = stack.request("/readyz", THROUGH_PROXY)
    assert (ready.status, json.loads(ready.body)) == (
        200,
        {"status": "ok", "checks": {"database": "ok", "broker": "ok"}},
    )
    assert ready.headers["Server"] == "gunicorn"


def test_production_settings_are_in_force(stack):
    plain = stack.request("/login/", {"Host": HOST})
    assert (plain.status, plain.headers["Location"]) == (301, f"https://{HOST}/login/")
    probe = stack.request("/healthz", {"Host": HOST})  # probes may come over plain HTTP
    assert (probe.status, probe.headers["Location"]) == (200, None)
    unknown_host = stack.request("/healthz", {**THROUGH_PROXY, "Host": "attacker.example"})
    assert unknown_host.status == 400


def test_the_container_health_checks_pass(stack):
    """The commands Docker runs as HEALTHCHECK (web) and compose.yaml runs for a worker."""
    probes = {
        "web": ("probe", "web"),
        "web /readyz": ("probe", "web", "/readyz"),
        "worker email": ("probe", "worker", "email"),
        # Nothing consumes billing here, so its probe must fail (after its 5 s timeout).
        "worker billing": ("probe", "worker", "billing"),
    }
    running = {name: stack.spawn(*args) for name, args in probes.items()}
    outputs = {name: process.communicate(timeout=60)[0] for name, process in running.items()}
    codes = {name: process.returncode for name, process in running.items()}
    assert codes == {"web": 0, "web /readyz": 0, "worker email": 0, "worker billing": 69}, outputs


def test_collected_static_files_are_served_hashed_and_cached_forever(stack):
    page = stack.request("/login/", THROUGH_PROXY)
    assert page.status == 200
    stylesheet = re.search(rb'href="(/static/portal/app\.[0-9a-f]{12}\.css)"', page.body)
    assert stylesheet, page.body[:2000]
    url = stylesheet.group(1).decode()
    response = stack.request(url, THROUGH_PROXY)
    assert response.status == 200
    collected = Path(stack.env["DJANGO_STATIC_ROOT"]) / url.removeprefix("/static/")
    assert response.body == collected.read_bytes()
    assert response.headers["Content-Type"] == 'text/css; charset="utf-8"'
    assert response.headers["Cache-Control"] == "max-age=315360000, public, immutable"


def test_a_task_is_run_by_the_worker_of_its_queue_only(stack, monkeypatch):
    # This process has the test settings, which run tasks inline; these go to the broker.
    monkeypatch.setattr(celery_app.conf, "task_always_eager", False)
    billing_task_id = uuid.uuid4().hex
    with celery_app.connection_for_write(stack.env["CELERY_BROKER_URL"]) as connection:
        email = celery_app.send_task(
            "core.send_email",
            kwargs={"to": "ops@example.com", "subject": "Stack check", "body": "Via Redis."},
            connection=connection,
        )
        # The worker consumes only the email queue: this one must wait for a billing worker.
        celery_app.send_task(
            "billing.retry_webhooks", task_id=billing_task_id, connection=connection
        )

    done = f"Task core.send_email[{email.id}] succeeded"
    wait_until(lambda: done in stack.log("worker-email"), "the e-mail task", stack, timeout=15)
    [message] = [path.read_text() for path in stack.outbox.iterdir()]
    assert "Subject: Stack check" in message
    assert "To: ops@example.com" in message
    assert "Via Redis." in message

    client = redis.Redis.from_url(stack.env["CELERY_BROKER_URL"])
    waiting = [json.loads(raw)["headers"]["id"] for raw in client.lrange("billing", 0, -1)]
    client.close()
    assert billing_task_id in waiting
    assert f"Task billing.retry_webhooks[{billing_task_id}]" not in stack.log("worker-email")


def test_beat_is_running(stack):
    assert stack.processes["beat"].poll() is None, stack.log("beat")
    assert "beat: Starting..." in stack.log("beat")
    schedule = Path(stack.env["BEAT_SCHEDULE_FILE"])
    assert list(schedule.parent.glob(f"{schedule.name}*")), "beat keeps its schedule state there"


def test_every_process_stops_cleanly_on_sigterm(stack):
    codes = stack.stop()
    assert codes == {"web": 0, "worker-email": 0, "beat": 0}, {
        name: stack.log(name)[-4000:] for name, code in codes.items() if code != 0
    }
