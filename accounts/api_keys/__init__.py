"""API keys: create, revoke and rotate. The key format is in `format`, authentication and the
key cache in `authentication`, the reads in `selectors`."""

from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from core import audit
from core.dates import format_datetime
from core.errors import NotAllowed, ServiceError

from ..guards import require_active_organization, require_permission, require_verified_email
from ..models import ApiKey, Membership, Organization, User
from ..permissions import (
    Permission,
    Role,
    may_make_service_keys,
    may_manage_others_keys,
    scopes_beyond_role,
)
from .authentication import Authenticated, api_key_authenticate, cache_key
from .format import generate

SCOPES = frozenset(ApiKey.Scope.values)
# An operator's key (no person behind it) cannot carry scopes whose endpoints act for someone.
OPERATOR_SCOPES = SCOPES - {ApiKey.Scope.RESERVATIONS_WRITE, ApiKey.Scope.KEYS_WRITE}


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


def _require_scopes_within_role(role: str, scopes: list[str]) -> None:
    beyond = scopes_beyond_role(role, scopes)
    if beyond:
        raise NotAllowed(
            f"Your role ({role}) cannot give a key {', '.join(beyond)}.",
            code="scope_beyond_role",
            param="scopes",
        )


def _service_user(organization: Organization, public_id: str, name: str) -> User:
    """The identity a new service key acts as: a member of the organization (admin, so the
    services' role checks pass; what it may actually do is bounded by the key's scopes) that
    has no password and is never listed on the team page."""
    user = User.objects.create_user(
        f"service-{public_id.encode().hex()}@keys.invalid",
        None,
        full_name=f"Service key “{name}” (hbk_{public_id}_…)"[:150],
        is_service=True,
        email_verified_at=timezone.now(),
    )
    Membership.objects.create(user=user, organization=organization, role=Role.ADMIN)
    return user


@transaction.atomic
def _create(
    *,
    organization: Organization,
    actor: User | None,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    maker: User | None = None,
    service_user: User | None = None,
    kind: str = ApiKey.Kind.PERSONAL,
) -> tuple[ApiKey, str]:
    """`maker` is who the key acts for (default: the actor); a service key acts as its
    service identity (`service_user`, made here unless a rotation passes the old one on)."""
    name, scopes = _validate(name, scopes, expires_at)
    key, public_id, digest = generate()
    if kind == ApiKey.Kind.SERVICE and service_user is None:
        service_user = _service_user(organization, public_id, name)
    api_key = ApiKey.objects.create(
        organization=organization,
        created_by=maker or actor,
        kind=kind,
        service_user=service_user if kind == ApiKey.Kind.SERVICE else None,
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
        data={"name": name, "scopes": scopes, "kind": kind},
    )
    return api_key, key


def api_key_create(
    *,
    organization: Organization,
    actor: User,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    kind: str = ApiKey.Kind.PERSONAL,
) -> tuple[ApiKey, str]:
    """A new key; the key itself is returned once and never stored. A personal key carries
    only scopes the actor's role allows; a service key (owners only) any scope."""
    role = require_permission(
        actor=actor, organization=organization, permission=Permission.MANAGE_API_KEYS
    )
    require_verified_email(actor)
    require_active_organization(organization)
    if kind not in ApiKey.Kind.values:
        raise ServiceError("Choose a personal or a service key.", code="invalid_kind", param="kind")
    if kind == ApiKey.Kind.SERVICE:
        if not may_make_service_keys(role):
            raise NotAllowed("Only an owner can make a service key.", param="kind")
    else:
        _require_scopes_within_role(role, scopes)
    return _create(
        organization=organization,
        actor=actor,
        name=name,
        scopes=scopes,
        expires_at=expires_at,
        kind=kind,
    )


def api_key_create_for_operator(
    *, organization: Organization, name: str, scopes: list[str], user: User | None = None
) -> tuple[ApiKey, str]:
    """For `manage.py create_api_key`: operations acting on a customer's behalf. With `user`
    the key acts for that member (within their role); without, it carries only scopes whose
    endpoints need nobody to act for."""
    if user is None:
        refused = sorted(set(scopes) - OPERATOR_SCOPES)
        if refused:
            raise ServiceError(
                f"A key without a person behind it cannot use {', '.join(refused)}: "
                "name the member it acts for with --user.",
                code="scope_needs_person",
                param="scopes",
            )
    else:
        role = _role_of(user, organization)
        if role is None or not user.is_active or user.is_service:
            raise ServiceError(
                f"{user.email} is not an active member of {organization.slug}.",
                code="not_a_member",
                param="user",
            )
        _require_scopes_within_role(role, scopes)
    return _create(
        organization=organization,
        actor=None,
        maker=user,
        name=name,
        scopes=scopes,
        expires_at=None,
    )


def _role_of(user: User, organization: Organization) -> str | None:
    return (
        Membership.objects.filter(user=user, organization=organization)
        .values_list("role", flat=True)
        .first()
    )


def _require_may_manage(*, actor: User, api_key: ApiKey) -> None:
    role = require_permission(
        actor=actor, organization=api_key.organization, permission=Permission.MANAGE_API_KEYS
    )
    if not may_manage_key(role=role, actor=actor, api_key=api_key):
        if api_key.is_service:
            raise NotAllowed("Only an owner can rotate or revoke a service key.")
        raise NotAllowed(f"Your role ({role}) manages only the keys you made.")


def may_manage_key(*, role: str, actor: User, api_key: ApiKey) -> bool:
    """May someone with `role` rotate or revoke this key (the page shows the buttons by it)."""
    if api_key.is_service:
        return may_make_service_keys(role)
    return api_key.created_by_id == actor.pk or may_manage_others_keys(role)


@transaction.atomic
def api_keys_revoke_for_maker(
    *, user: User, actor: User | None, reason: str, organization: Organization | None = None
) -> int:
    """Revoke, permanently and audited, every working personal key `user` made (in
    `organization`, or everywhere); service keys stay. Returns how many."""
    now = timezone.now()
    keys = ApiKey.objects.select_for_update().filter(created_by=user, kind=ApiKey.Kind.PERSONAL)
    if organization is not None:
        keys = keys.filter(organization=organization)
    revoked = []
    for api_key in keys.select_related("organization").order_by("pk"):
        if api_key.revoked_at is not None and api_key.revoked_at <= now:
            continue
        api_key.revoked_at = now  # a key in its rotation grace ends now too
        api_key.save(update_fields=["revoked_at"])
        audit.record(
            action="api_key.revoked",
            actor=actor,
            organization=api_key.organization,
            target=api_key,
            data={"reason": reason, "maker": user.email},
        )
        revoked.append(api_key.digest)
    transaction.on_commit(
        lambda: cache.delete_many([cache_key(key_digest) for key_digest in revoked])
    )
    return len(revoked)


def api_key_verify(raw: str, *, caller: object) -> Authenticated:
    """For the model gateway: check someone else's key. Only a platform organization's key may
    ask, and asking is not using (the checked key's last-use time stays)."""
    if not isinstance(caller, ApiKey) or not caller.organization.is_platform:
        raise NotAllowed("Only the model gateway's key can verify other keys.", code="not_platform")
    return api_key_authenticate(raw, touch=False)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: User) -> ApiKey:
    _require_may_manage(actor=actor, api_key=api_key)
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
    """A new key with the same name, kind and scopes; the old one keeps working for `grace`.

    Rotation cannot be chained: a key already in its grace period is not rotated again (its
    replacement is), so no key outlives the grace of its first rotation."""
    if not timedelta(0) <= grace <= timedelta(days=7):
        raise ServiceError("Keep the old key working for at most 7 days.", param="grace")
    _require_may_manage(actor=actor, api_key=api_key)
    role = require_permission(
        actor=actor, organization=api_key.organization, permission=Permission.MANAGE_API_KEYS
    )
    require_verified_email(actor)
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if not locked.is_usable():
            raise ServiceError("Only a working key can be rotated.", code="not_rotatable")
        if locked.revoked_at is not None:
            raise ServiceError(
                "This key was already rotated and stops working at "
                f"{format_datetime(locked.revoked_at)}; rotate its replacement instead.",
                code="already_rotated",
            )
        maker = actor if locked.is_service or locked.created_by is None else locked.created_by
        if not locked.is_service:
            # The replacement acts for the same person, within that person's current role.
            maker_role = role if maker.pk == actor.pk else _role_of(maker, locked.organization)
            _require_scopes_within_role(maker_role or "", locked.scopes)
        new, key = _create(
            organization=locked.organization,
            actor=actor,
            maker=maker,
            name=locked.name,
            scopes=locked.scopes,
            expires_at=locked.expires_at,
            kind=locked.kind,
            service_user=locked.service_user,
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
