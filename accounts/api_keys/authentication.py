"""Authenticate a presented API key, and the key cache.

Authentication costs at most one database query per request: a key's record is cached for
API_KEY_CACHE_SECONDS (5 s), so a revoked key stops within that, and its last-used time is
written at most once a minute.

Every fill of the cache also checks the person behind a personal key: still active, still a
member of the key's organization, in a role whose scope ceiling covers every scope on the key.
So however that changed (a service, the admin form, a plain save(), a script) the key stops
within the cache time, and at once in a process that also forgot the key (the services do).
A key whose maker's role no longer covers its scopes is refused whole rather than narrowed:
a pipeline that silently lost half its rights fails later and more confusingly than one that
is told at once to get a new key.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from core import audit

from ..guards import suspension_message
from ..models import ApiKey, Membership, Organization
from ..permissions import scopes_beyond_role
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


def _revoke_orphan(api_key: ApiKey, reason: str) -> None:
    """A key whose maker left or was deactivated some other way than through the services
    (the admin form, a script) is revoked for good the first time it is presented, as the
    services would have done: bringing the person back does not bring the key back."""
    now = timezone.now()
    with transaction.atomic():
        revoked = (
            ApiKey.objects.filter(pk=api_key.pk)
            .filter(Q(revoked_at__isnull=True) | Q(revoked_at__gt=now))
            .update(revoked_at=now)
        )
        if revoked:
            audit.record(
                action="api_key.revoked",
                actor=None,
                organization=api_key.organization,
                target=api_key,
                data={"reason": reason, "maker": getattr(api_key.created_by, "email", "")},
            )


def _maker_check(api_key: ApiKey) -> None:
    """Refuse a key whose maker can no longer stand behind it; note the maker's role on the
    record (`maker_role`, cached with it) for the reads that depend on it."""
    api_key.maker_role = None  # type: ignore[attr-defined]  # cached beside the record
    if api_key.is_service:
        if api_key.service_user is None or not api_key.service_user.is_active:
            raise KeyRefused("revoked_key", "The API key was revoked.")
        # Its identity's membership is what lets it act; one deleted (a script, the admin)
        # ends the key as it would a person's.
        if api_key.service_membership_role is None:  # type: ignore[attr-defined]
            _revoke_orphan(api_key, "key_owner_left")
            raise KeyRefused(
                "key_owner_left", "This service key's access to the organization was removed."
            )
        return
    maker = api_key.created_by
    if maker is None:  # an operator's key (manage.py create_api_key without --user)
        return
    if not maker.is_active:
        _revoke_orphan(api_key, "key_owner_inactive")
        raise KeyRefused("key_owner_inactive", "The person who made this key was deactivated.")
    role = api_key.maker_membership_role  # type: ignore[attr-defined]  # annotated on fill
    if role is None:
        _revoke_orphan(api_key, "key_owner_left")
        raise KeyRefused(
            "key_owner_left", "The person who made this key is no longer in the organization."
        )
    beyond = scopes_beyond_role(role, api_key.scopes)
    if beyond:
        raise KeyRefused(
            "scope_beyond_role",
            f"This key carries {', '.join(beyond)}, which its maker's role ({role}) no longer "
            "allows. Make a new key with the scopes the role allows.",
            status=403,
        )
    api_key.maker_role = role  # type: ignore[attr-defined]


def api_key_authenticate(raw: str, *, ip: str | None = None, touch: bool = True) -> Authenticated:
    """The key's record and organization, or KeyRefused saying why (malformed, unknown,
    revoked, expired, organization suspended, maker gone or demoted). `touch=False` leaves the
    last-use time alone (checking a key for someone else is not using it)."""
    if parse(raw) is None:
        raise KeyRefused("malformed_key", "The API key is malformed.")
    key_digest = digest(raw)
    api_key = cache.get(cache_key(key_digest))
    if api_key is None:
        api_key = (
            ApiKey.objects.select_related("organization", "created_by", "service_user")
            # The maker's role comes in the same query: still one query per cache fill.
            .annotate(
                maker_membership_role=Subquery(
                    Membership.objects.filter(
                        user_id=OuterRef("created_by_id"),
                        organization_id=OuterRef("organization_id"),
                    ).values("role")[:1]
                ),
                service_membership_role=Subquery(
                    Membership.objects.filter(
                        user_id=OuterRef("service_user_id"),
                        organization_id=OuterRef("organization_id"),
                    ).values("role")[:1]
                ),
            )
            .filter(digest=key_digest)
            .first()
        )
        if api_key is None:
            raise KeyRefused("unknown_key", "The API key is not valid.")
        if matches(raw, api_key.digest) and api_key.is_usable():  # else refused below
            _maker_check(api_key)  # a refused key is not cached: it is checked again next time
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
    if touch and (api_key.last_used_at is None or api_key.last_used_at < now - LAST_USED_EVERY):
        _touch(api_key, now, ip)
    return Authenticated(api_key=api_key, organization=api_key.organization)


def _touch(api_key: ApiKey, now: datetime, ip: str | None) -> None:
    """Record use at most once a minute across every process (the filter is the guard)."""
    ApiKey.objects.filter(pk=api_key.pk).exclude(last_used_at__gte=now - LAST_USED_EVERY).update(
        last_used_at=now, last_used_ip=ip
    )
    api_key.last_used_at, api_key.last_used_ip = now, ip
    cache.set(cache_key(api_key.digest), api_key, settings.API_KEY_CACHE_SECONDS)


def api_key_cache_forget_keys(digests: list[str]) -> None:
    cache.delete_many([cache_key(key_digest) for key_digest in digests])


def api_key_cache_forget_maker(*, user_id: int) -> None:
    """Drop every key a person made from the cache, so a change to that person (a role, leaving)
    reaches the next request in this process."""
    api_key_cache_forget_keys(
        list(ApiKey.objects.filter(created_by_id=user_id).values_list("digest", flat=True))
    )


def api_key_cache_forget(*, organization_id: int) -> None:
    """Drop the organization's keys from the cache, so a change to the organization (a
    suspension) reaches the next request instead of waiting for the cache to lapse."""
    digests = ApiKey.objects.filter(organization_id=organization_id).values_list(
        "digest", flat=True
    )
    cache.delete_many([cache_key(key_digest) for key_digest in digests])
