"""Authenticate a presented API key, and the key cache.

Authentication costs at most one database query per request: a key's record is cached for
API_KEY_CACHE_SECONDS (5 s), so a revoked key stops within that, and its last-used time is
written at most once a minute.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from ..guards import suspension_message
from ..models import ApiKey, Organization
from .format import digest, matches, parse

LAST_USED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Authenticated:
    api_key: ApiKey
    organization: Organization


class KeyRefused(Exception):
    """`status` 401 for a key that is not (or no longer) good, 403 for a good key whose
    organization may not use it."""

    def __init__(self, code: str, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def cache_key(key_digest: str) -> str:
    """Where a key's record is cached, by the digest of the key."""
    return f"api-key:{key_digest}"


def api_key_authenticate(raw: str, *, ip: str | None = None) -> Authenticated:
    """The key's record and organization, or KeyRefused saying why (malformed, unknown,
    revoked, expired, organization suspended)."""
    if parse(raw) is None:
        raise KeyRefused("malformed_key", "The API key is malformed.")
    key_digest = digest(raw)
    api_key = cache.get(cache_key(key_digest))
    if api_key is None:
        api_key = (
            ApiKey.objects.select_related("organization", "created_by")
            .filter(digest=key_digest)
            .first()
        )
        if api_key is None:
            raise KeyRefused("unknown_key", "The API key is not valid.")
        cache.set(cache_key(key_digest), api_key, settings.API_KEY_CACHE_SECONDS)
    if not matches(raw, api_key.digest):  # constant time, on top of the index lookup
        raise KeyRefused("unknown_key", "The API key is not valid.")
    now = timezone.now()
    if api_key.revoked_at is not None and api_key.revoked_at <= now:
        raise KeyRefused("revoked_key", "The API key was revoked.")
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise KeyRefused("expired_key", "The API key has expired.")
    if not api_key.organization.is_active:
        raise KeyRefused(
            "organization_suspended", suspension_message(api_key.organization), status=403
        )
    if api_key.last_used_at is None or api_key.last_used_at < now - LAST_USED_EVERY:
        _touch(api_key, now, ip)
    return Authenticated(api_key=api_key, organization=api_key.organization)


def _touch(api_key: ApiKey, now: datetime, ip: str | None) -> None:
    """Record use at most once a minute across every process (the filter is the guard)."""
    ApiKey.objects.filter(pk=api_key.pk).exclude(last_used_at__gte=now - LAST_USED_EVERY).update(
        last_used_at=now, last_used_ip=ip
    )
    api_key.last_used_at, api_key.last_used_ip = now, ip
    cache.set(cache_key(api_key.digest), api_key, settings.API_KEY_CACHE_SECONDS)


def api_key_cache_forget(*, organization_id: int) -> None:
    """Drop the organization's keys from the cache, so a change to the organization (a
    suspension) reaches the next request instead of waiting for the cache to lapse."""
    digests = ApiKey.objects.filter(organization_id=organization_id).values_list(
        "digest", flat=True
    )
    cache.delete_many([cache_key(key_digest) for key_digest in digests])
