"""API keys: create, revoke, rotate, and authenticate a presented key.

Authentication costs at most one database query per request: a key's record is cached for
API_KEY_CACHE_SECONDS (5 s), so a revoked key stops within that, and its last-used time is
written at most once a minute.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from core import audit
from core.errors import NotFound, ServiceError

from . import keys
from .models import ApiKey, Organization, User
from .permissions import Permission
from .services import (
    require_active_organization,
    require_permission,
    require_verified_email,
    suspension_message,
)

SCOPES = frozenset(ApiKey.Scope.values)
LAST_USED_EVERY = timedelta(minutes=1)


def _validate(name: str, scopes: list[str], expires_at: datetime | None) -> tuple[str, list[str]]:
    name = (name or "").strip()
    if not 1 <= len(name) <= 80:
        raise ServiceError(
            "Name the key (at most 80 characters).", code="invalid_name", param="name"
        )
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise ServiceError(
            f"Unknown scopes: {', '.join(unknown)}.", code="invalid_scope", param="scopes"
        )
    if not scopes:
        raise ServiceError("Give the key at least one scope.", code="invalid_scope", param="scopes")
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError(
            "The expiry must be in the future.", code="invalid_expiry", param="expires_at"
        )
    return name, sorted(set(scopes))


@transaction.atomic
def _create(
    *,
    organization: Organization,
    actor: User | None,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    name, scopes = _validate(name, scopes, expires_at)
    key, public_id, digest = keys.generate()
    api_key = ApiKey.objects.create(
        organization=organization,
        created_by=actor,
        name=name,
        public_id=public_id,
        digest=digest,
        scopes=scopes,
        expires_at=expires_at,
    )
    audit.record(
        action="api_key.created",
        actor=actor,
        organization=organization,
        target=api_key,
        data={"name": name, "scopes": scopes},
    )
    return api_key, key


def api_key_create(
    *,
    organization: Organization,
    actor: User,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key; the key itself is returned once and never stored."""
    require_permission(
        actor=actor, organization=organization, permission=Permission.MANAGE_API_KEYS
    )
    require_verified_email(actor)
    require_active_organization(organization)
    return _create(
        organization=organization, actor=actor, name=name, scopes=scopes, expires_at=expires_at
    )


def api_key_create_for_operator(
    *, organization: Organization, name: str, scopes: list[str]
) -> tuple[ApiKey, str]:
    """For `manage.py create_api_key`: operations acting on a customer's behalf."""
    return _create(organization=organization, actor=None, name=name, scopes=scopes, expires_at=None)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: User) -> ApiKey:
    require_permission(
        actor=actor, organization=api_key.organization, permission=Permission.MANAGE_API_KEYS
    )
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    now = timezone.now()
    if locked.revoked_at is not None and locked.revoked_at <= now:
        raise ServiceError("This key is already revoked.", code="already_revoked")
    locked.revoked_at = now
    locked.save(update_fields=["revoked_at"])
    audit.record(
        action="api_key.revoked", actor=actor, organization=locked.organization, target=locked
    )
    transaction.on_commit(lambda: cache.delete(_cache_key(locked.digest)))
    return locked


def api_key_rotate(*, api_key: ApiKey, actor: User, grace: timedelta) -> tuple[ApiKey, str]:
    """A new key with the same name and scopes; the old one keeps working for `grace`."""
    if not timedelta(0) <= grace <= timedelta(days=7):
        raise ServiceError("Keep the old key working for at most 7 days.", param="grace")
    require_permission(
        actor=actor, organization=api_key.organization, permission=Permission.MANAGE_API_KEYS
    )
    require_verified_email(actor)
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if not locked.is_usable():
            raise ServiceError("Only a working key can be rotated.", code="not_rotatable")
        new, key = _create(
            organization=locked.organization,
            actor=actor,
            name=locked.name,
            scopes=locked.scopes,
            expires_at=locked.expires_at,
        )
        locked.revoked_at = timezone.now() + grace
        locked.replaced_by = new
        locked.save(update_fields=["revoked_at", "replaced_by"])
        audit.record(
            action="api_key.rotated",
            actor=actor,
            organization=locked.organization,
            target=locked,
            data={"replaced_by": new.public_id, "grace_seconds": int(grace.total_seconds())},
        )
        transaction.on_commit(lambda: cache.delete(_cache_key(locked.digest)))
    return new, key


# --- Authentication -------------------------------------------------------------------------
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


def _cache_key(digest: str) -> str:
    return f"api-key:{digest}"


def authenticate(raw: str, *, ip: str | None = None) -> Authenticated:
    """The key's record and organization, or KeyRefused saying why (malformed, unknown,
    revoked, expired, organization suspended)."""
    if keys.parse(raw) is None:
        raise KeyRefused("malformed_key", "The API key is malformed.")
    digest = keys.digest(raw)
    api_key = cache.get(_cache_key(digest))
    if api_key is None:
        api_key = (
            ApiKey.objects.select_related("organization", "created_by")
            .filter(digest=digest)
            .first()
        )
        if api_key is None:
            raise KeyRefused("unknown_key", "The API key is not valid.")
        cache.set(_cache_key(digest), api_key, settings.API_KEY_CACHE_SECONDS)
    if not keys.matches(raw, api_key.digest):  # constant time, on top of the index lookup
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
    cache.set(_cache_key(api_key.digest), api_key, settings.API_KEY_CACHE_SECONDS)


def forget_cached_keys(*, organization_id: int) -> None:
    """Drop the organization's keys from the cache, so a change to the organization (a
    suspension) reaches the next request instead of waiting for the cache to lapse."""
    digests = ApiKey.objects.filter(organization_id=organization_id).values_list(
        "digest", flat=True
    )
    cache.delete_many([_cache_key(digest) for digest in digests])


def keys_for_org(organization: Organization):  # type: ignore[no-untyped-def]
    return ApiKey.objects.filter(organization=organization).select_related("created_by")


def key_for_org(organization: Organization, public_id: str) -> ApiKey:
    api_key = keys_for_org(organization).filter(public_id=public_id).first()
    if api_key is None:
        raise NotFound("No such API key.")
    return api_key
