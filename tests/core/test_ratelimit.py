"""Rate limits hold when requests arrive together: on every cache the settings can name (local
memory in tests, the database cache by default, Redis when REDIS_URL or CACHE_URL says so),
exactly the limit pass, whatever the number of clients racing for the last places."""

import http.client
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import redis
from django.core.management import call_command
from django.db import connection, connections

from accounts import api_keys
from core.api import KeyRateThrottle
from core.ratelimit import RateLimited, client_bucket, rate_limit_enforce, rate_limit_hit

CLIENTS = 32
LIMIT = 10


def _redis_url() -> str | None:
    for name in ("CACHE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        url = os.environ.get(name, "")
        if url.startswith(("redis://", "rediscache://")):
            return "redis://" + url.split("://", 1)[1]
    return None


@pytest.fixture(params=["locmem", "database", "redis"])
def shared_cache(request, settings, transactional_db) -> Iterator[str]:
    """The default cache switched to each kind; the database one on the suite's own database
    (SQLite or PostgreSQL), Redis under a key prefix of its own."""
    kind = request.param
    prefix = f"hb-test-{uuid.uuid4().hex}"
    if kind == "locmem":
        config = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": prefix}
    elif kind == "database":
        config = {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "hb_ratelimit_cache",
        }
    else:
        url = _redis_url()
        if url is None:
            pytest.skip("needs Redis: set REDIS_URL or CELERY_BROKER_URL=redis://... (.ci/run)")
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.exceptions.ConnectionError:
            pytest.skip(f"no Redis answers at {url}")
        config = {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": prefix,
        }
    settings.CACHES = {"default": config}
    if kind == "database":
        call_command("createcachetable", "hb_ratelimit_cache", verbosity=0)
    yield kind
    if kind == "database":
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE hb_ratelimit_cache")


def _together(call: Callable[[], object], clients: int = CLIENTS) -> list[object]:
    """Run `call` in `clients` threads released at the same moment; each thread's answer."""
    start = threading.Barrier(clients)
    answers: list[object] = []
    lock = threading.Lock()

    def run() -> None:
        start.wait()
        try:
            answer = call()
        except Exception as exc:  # noqa: BLE001 - the test reports what went wrong
            answer = exc
        finally:
            connections.close_all()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == clients
    return answers


def test_each_request_gets_its_own_number_in_the_window(shared_cache):
    answers = _together(
        lambda: rate_limit_hit(scope="t", ident="someone", limit=LIMIT, window=3600)
    )
    counts = sorted(answer.count for answer in answers)  # type: ignore[attr-defined]
    assert counts == list(range(1, CLIENTS + 1))
    assert sum(answer.allowed for answer in answers) == LIMIT  # type: ignore[attr-defined]


def test_the_api_throttle_lets_exactly_the_limit_through_together(shared_cache, settings):
    settings.API_RATE_LIMIT = LIMIT
    settings.API_RATE_WINDOW = 3600
    request = SimpleNamespace(auth=SimpleNamespace(pk=7), user=None)

    def ask() -> bool:
        return KeyRateThrottle().allow_request(request, None)  # type: ignore[arg-type]

    assert Counter(_together(ask)) == {True: LIMIT, False: CLIENTS - LIMIT}
    # Another key has a window of its own.
    other = SimpleNamespace(auth=SimpleNamespace(pk=8), user=None)
    assert KeyRateThrottle().allow_request(other, None) is True  # type: ignore[arg-type]


def test_a_window_ends_and_the_next_one_starts_afresh(settings):
    hits = [
        rate_limit_hit(scope="t", ident="a", limit=2, window=60, now=120.0 + second)
        for second in range(3)
    ]
    assert [(h.count, h.allowed, h.remaining, h.retry_after) for h in hits] == [
        (1, True, 1, 60),
        (2, True, 0, 59),
        (3, False, 0, 58),
    ]
    later = rate_limit_hit(scope="t", ident="a", limit=2, window=60, now=180.5)
    assert (later.count, later.allowed, later.retry_after) == (1, True, 60)


def test_enforce_says_the_limit_and_when_to_come_back(settings):
    for _ in range(2):
        rate_limit_enforce(scope="t", ident="b", limit=2, window=600, message="x")
    with pytest.raises(RateLimited) as refused:
        rate_limit_enforce(
            scope="t", ident="b", limit=2, window=600, message="{limit} an hour; {minutes} min"
        )
    assert refused.value.status == 429
    assert refused.value.code == "rate_limited"
    assert 1 <= refused.value.retry_after <= 600
    assert refused.value.message == f"2 an hour; {-(-refused.value.retry_after // 60)} min"


def test_concurrent_api_clients_see_exactly_the_limit_pass(
    live_server, organization, owner, settings
):
    settings.API_RATE_LIMIT = LIMIT
    settings.API_RATE_WINDOW = 3600
    key = api_keys.api_key_create(
        organization=organization, actor=owner, name="ci", scopes=["reservations:read"]
    )[1]
    address = urlsplit(live_server.url)

    def ask() -> tuple[int, str | None]:
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        try:
            conn.request("GET", "/api/v1/reservations/", headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            response.read()
            return response.status, response.getheader("Retry-After")
        finally:
            conn.close()

    answers = _together(ask, clients=24)
    statuses = Counter(status for status, _ in answers)  # type: ignore[misc]
    assert statuses == {200: LIMIT, 429: 24 - LIMIT}
    waits = {int(wait) for status, wait in answers if status == 429}  # type: ignore[misc]
    # Every refusal names the end of the same window (a second apart at most).
    assert max(waits) - min(waits) <= 1
    assert 0 < min(waits) <= 3600


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("not an address", "not an address"),
    ],
)
def test_a_client_is_counted_by_its_address_or_its_ipv6_slash_64(address, bucket):
    assert client_bucket(address) == bucket
