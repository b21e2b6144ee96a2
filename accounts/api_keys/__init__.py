"""API keys: create, revoke and rotate. The key format is in `format`, authentication and the
key cache in `authentication`, the reads in `selectors`."""

from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from core import audit
from core.errors import ServiceError

from ..guards import require_active_organization, require_permission, require_verified_email
from ..models import ApiKey, Organization, User
from ..permissions import Permission
from .authentication import cache_key
from .format import generate

SCOPES = frozenset(ApiKey.Scope.values)


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
    key, public_id, digest = generate()
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
    transaction.on_commit(lambda: cache.delete(cache_key(locked.digest)))
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
        transaction.on_commit(lambda: cache.delete(cache_key(locked.digest)))
    return new, key
