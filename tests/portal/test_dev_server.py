"""`make run` on PostgreSQL: the threaded development server (runserver with the local settings,
as bin/run.py starts it) serves 32 concurrent API clients without a server error, and leaves no
database connection open behind its finished threads."""

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

from accounts import api_keys

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 32
ROUNDS = 2  # requests per client, each on a new connection (a thread of its own in runserver)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_connections(name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name])
        return cursor.fetchone()[0]


@pytest.fixture
def dev_server(transactional_db, tmp_path) -> Iterator[tuple[int, str]]:
    """runserver on the test database; its port and the application name its connections use."""
    config = connection.settings_dict
    if config["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")
    name = f"hb-devserver-{secrets.token_hex(4)}"
    credentials = quote(config["USER"], safe="")
    if config["PASSWORD"]:
        credentials += ":" + quote(config["PASSWORD"], safe="")
    host, port = config["HOST"] or "127.0.0.1", config["PORT"] or 5432
    url = f"postgres://{credentials}@{host}:{port}/{config['NAME']}?application_name={name}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CACHE_"))}
    env = {
        **clean,
        "DJANGO_SETTINGS_MODULE": "portal.settings.local",
        "DATABASE_URL": url,
        "CACHE_URL": "locmemcache://",
        "API_RATE_LIMIT": "100000",
        "PYTHONUNBUFFERED": "1",
    }
    web = _free_port()
    log = (tmp_path / "runserver.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{web}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", web), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((tmp_path / "runserver.log").read_text()[-3000:])
                time.sleep(0.2)
        yield web, name
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def test_thirty_two_concurrent_clients_get_no_server_error(dev_server, organization, owner):
    web, name = dev_server
    key = api_keys.api_key_create(
        organization=organization, actor=owner, name="load", scopes=["reservations:read"]
    )[1]
    statuses: Counter = Counter()
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client() -> None:
        start.wait()
        for _ in range(ROUNDS):
            conn = http.client.HTTPConnection("127.0.0.1", web, timeout=60)
            try:
                conn.request(
                    "GET", "/api/v1/reservations/", headers={"Authorization": f"Bearer {key}"}
                )
                response = conn.getresponse()
                response.read()
                status: int | str = response.status
            except OSError as exc:
                status = type(exc).__name__
            finally:
                conn.close()
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == {200: CLIENTS * ROUNDS}
    # Each finished request closed its connection: none is left to pile up over a day of use.
    deadline = time.monotonic() + 5
    while _server_connections(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _server_connections(name) == 0
