"""Rate limits that hold when requests arrive together.

A limit is a fixed window: each request in a window takes a number from one atomic increment in
the shared cache and passes while its number is at most the limit. Reading a count and writing
it back (a token bucket kept in a plain cache) lets every request that reads before the first
write through; an increment gives each request its own number, so exactly `limit` pass however
many arrive at once.

The increment is atomic on every cache the settings can name:
- Redis: one Lua script (INCR, and EXPIRE on the first hit), so a counter never outlives its
  window, even when the process dies between the two.
- The database cache: the counter's row is locked (SELECT ... FOR UPDATE on PostgreSQL; SQLite's
  IMMEDIATE transactions take the write lock when they begin) while it is read and rewritten.
- Local memory and memcached: `add` then `incr`, each atomic there.
"""

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.db import BaseDatabaseCache
from django.core.cache.backends.redis import RedisCache
from django.db import connections, router, transaction

from .errors import ServiceError

# INCR creates the key at 1; only then is its lifetime set, in the same step.
_REDIS_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class RateLimited(ServiceError):
    """Too many requests of one kind in the window; `retry_after` says when the next may pass."""

    status = 429
    default_code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: int, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Window:
    """One request's place in its window."""

    limit: int
    count: int  # this request's number in the window, from 1
    retry_after: int  # whole seconds until the window ends

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)


def rate_limit_hit(
    *, scope: str, ident: str, limit: int, window: int, now: float | None = None
) -> Window:
    """Count one request of `scope` by `ident` (a key id, an address, an organization) in the
    current `window`-second window of the default cache, and say whether it is within `limit`.

    The identity is hashed: e-mail addresses and client addresses never reach cache keys.
    Refused requests count too, so hammering does not find a gap."""
    moment = time.time() if now is None else now
    index = int(moment // window)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
    key = f"ratelimit:{scope}:{digest}:{index}"
    retry_after = max(1, math.ceil((index + 1) * window - moment))
    # Kept a little past the window's end, so a clock a second behind still finds it.
    count = _increment(caches["default"], key, timeout=window + 5)
    return Window(limit=limit, count=count, retry_after=retry_after)


def rate_limit_enforce(
    *, scope: str, ident: str, limit: int, window: int, message: str, param: str | None = None
) -> None:
    """Count a request and raise RateLimited (429) with `message` when it is over `limit`.
    `message` may name `{limit}` and `{minutes}` (whole minutes until the window ends); nothing
    else in it is read as a placeholder, so it may quote what a user typed."""
    hit = rate_limit_hit(scope=scope, ident=ident, limit=limit, window=window)
    if not hit.allowed:
        minutes = max(1, math.ceil(hit.retry_after / 60))
        text = message.replace("{limit}", str(limit)).replace("{minutes}", str(minutes))
        raise RateLimited(text, retry_after=hit.retry_after, param=param)


def email_rate_enforce(*, kind: str, ident: str, message: str, param: str | None = None) -> None:
    """One more e-mail of `kind` (a key of EMAIL_RATE_LIMITS) for `ident` in the current
    EMAIL_RATE_WINDOW, or RateLimited with `message`."""
    rate_limit_enforce(
        scope=f"email:{kind}",
        ident=ident,
        limit=settings.EMAIL_RATE_LIMITS[kind],
        window=int(settings.EMAIL_RATE_WINDOW.total_seconds()),
        message=message,
        param=param,
    )


def client_bucket(address: str) -> str:
    """The client address a per-client limit counts: an IPv6 address by its /64, the block one
    subscriber is usually given, so cycling through addresses in it does not reset the count."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:  # an IPv4 client seen through a dual-stack socket
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _increment(cache: BaseCache, key: str, *, timeout: int) -> int:
    if isinstance(cache, RedisCache):
        return _redis_increment(cache, key, timeout=timeout)
    if isinstance(cache, BaseDatabaseCache):
        return _database_increment(cache, key, timeout=timeout)
    while True:
        if cache.add(key, 1, timeout):
            return 1
        try:
            return int(cache.incr(key))
        except ValueError:  # expired between the two calls: start the window again
            continue


def _redis_increment(cache: RedisCache, key: str, *, timeout: int) -> int:
    full_key = cache.make_and_validate_key(key)
    client = cache._cache.get_client(full_key, write=True)
    return int(client.eval(_REDIS_HIT, 1, full_key, timeout))


def _database_increment(cache: BaseDatabaseCache, key: str, *, timeout: int) -> int:
    alias = router.db_for_write(cache.cache_model_class)
    connection = connections[alias]
    with transaction.atomic(using=alias):
        if cache.add(key, 1, timeout):
            return 1
        if connection.features.has_select_for_update:
            table = connection.ops.quote_name(cache.cache_model_class._meta.db_table)
            column = connection.ops.quote_name("cache_key")
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT {column} FROM {table} WHERE {column} = %s FOR UPDATE",  # noqa: S608
                    [cache.make_and_validate_key(key)],
                )
        count = int(cache.get(key, 0)) + 1
        cache.set(key, count, timeout)
        return count
