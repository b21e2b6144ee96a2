"""Writes for users, organizations, memberships and invitations.

Every function is keyword-only, runs in one transaction, validates before it saves, records an
audit event, and raises `core.errors.ServiceError` (nothing changed) when it cannot proceed.
"""

from decimal import Decimal, InvalidOperation

from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from core import audit
from core.emails import queue_email
from core.errors import Conflict, NotAllowed, NotFound, ServiceError

from . import selectors, tokens
from .api_keys.authentication import forget_cached_keys
from .guards import require_permission, require_staff_permission
from .models import Invitation, Membership, Organization, User
from .permissions import Permission, Role, can
from .validators import validate_org_slug


# --- Sign-up and organizations --------------------------------------------------------------
def validate_new_email(email: str) -> str:
    email = User.objects.normalize_email(email).lower()
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict(
            "An account with this e-mail address already exists. Sign in instead.",
            code="email_taken",
            param="email",
        )
    return email


def validate_new_password(password: str, user: User) -> None:
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ServiceError(" ".join(exc.messages), code="weak_password", param="password") from exc


def validate_new_slug(slug: str) -> None:
    try:
        validate_org_slug(slug)
    except ValidationError as exc:
        raise ServiceError(exc.messages[0], code=exc.code, param="slug") from exc
    if selectors.slug_taken(slug):
        raise Conflict("This address is taken; choose another.", code="slug_taken", param="slug")


@transaction.atomic
def user_create(*, email: str, password: str, full_name: str = "") -> User:
    email = validate_new_email(email)
    user = User(email=email, full_name=full_name.strip())
    validate_new_password(password, user)
    user.set_password(password)
    user.full_clean(exclude=["password"])
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:  # lost a race with another sign-up for the same address
        raise Conflict(
            "An account with this e-mail address already exists. Sign in instead.",
            code="email_taken",
            param="email",
        ) from exc
    audit.record(action="user.created", actor=user, target=user)
    return user


@transaction.atomic
def organization_create(
    *, owner: User, name: str, slug: str, country: str, billing_email: str
) -> Organization:
    validate_new_slug(slug)
    organization = Organization(
        name=name.strip(), slug=slug, country=country, billing_email=billing_email.lower()
    )
    try:
        organization.full_clean()
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise ServiceError(messages[0], code="invalid", param=field) from exc
    try:
        with transaction.atomic():
            organization.save()
    except IntegrityError as exc:
        raise Conflict(
            "This address is taken; choose another.", code="slug_taken", param="slug"
        ) from exc
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    audit.record(
        action="organization.created", actor=owner, organization=organization, target=organization
    )
    return organization


@transaction.atomic
def signup(
    *,
    email: str,
    password: str,
    full_name: str,
    organization_name: str,
    organization_slug: str,
    country: str,
    billing_email: str,
) -> tuple[User, Organization]:
    """Create the user, their organization and the owner membership together, or nothing."""
    user = user_create(email=email, password=password, full_name=full_name)
    try:
        organization = organization_create(
            owner=user,
            name=organization_name,
            slug=organization_slug,
            country=country,
            billing_email=billing_email or user.email,
        )
    except ServiceError as exc:
        # Name the sign-up form's fields, which carry an organization_ prefix.
        exc.param = {"slug": "organization_slug", "name": "organization_name"}.get(
            exc.param or "", exc.param
        )
        raise
    email_verification_send(user=user)
    return user, organization


@transaction.atomic
def organization_update(*, organization: Organization, actor: User, **fields: str) -> Organization:
    require_permission(
        actor=actor, organization=organization, permission=Permission.MANAGE_ORGANIZATION
    )
    editable = {"name", "legal_name", "country", "billing_email", "tax_id", "address"}
    unknown = set(fields) - editable
    if unknown:
        raise ServiceError(f"These fields cannot be changed here: {', '.join(sorted(unknown))}.")
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    before = {name: str(getattr(organization, name)) for name in fields}
    for name, value in fields.items():
        setattr(organization, name, value)
    try:
        organization.full_clean()
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise ServiceError(messages[0], param=field) from exc
    organization.save(update_fields=list(fields))
    changes = {
        name: [before[name], str(getattr(organization, name))]
        for name in fields
        if before[name] != str(getattr(organization, name))
    }
    if changes:
        audit.record(
            action="organization.updated",
            actor=actor,
            organization=organization,
            target=organization,
            data={"changes": changes},
        )
    return organization


# --- E-mail verification --------------------------------------------------------------------
def email_verification_send(*, user: User) -> None:
    if user.is_verified:
        return
    token = tokens.email_verification_token(user)
    queue_email(
        to=user.email,
        template="verify_email",
        context={"user": user, "url": settings.SITE_URL + reverse("verify-email", args=[token])},
    )


@transaction.atomic
def email_verify(*, token: str) -> User:
    try:
        user_id, email = tokens.read_email_verification_token(token)
    except signing.SignatureExpired as exc:
        raise ServiceError(
            "This verification link has expired. Sign in and send yourself a new one.",
            code="link_expired",
        ) from exc
    except signing.BadSignature as exc:
        raise ServiceError(
            "This verification link is not valid. Copy the whole link from the e-mail, or send "
            "yourself a new one.",
            code="link_invalid",
        ) from exc
    user = User.objects.select_for_update().filter(pk=user_id, email=email).first()
    if user is None:
        raise ServiceError(
            "This verification link is for an address that is no longer in use.",
            code="link_invalid",
        )
    if not user.is_verified:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        audit.record(action="user.email_verified", actor=user, target=user)
    return user


# --- Profile ---------------------------------------------------------------------------------
@transaction.atomic
def profile_update(*, user: User, full_name: str) -> User:
    full_name = full_name.strip()
    if len(full_name) > 150:
        raise ServiceError("Use at most 150 characters for your name.", param="full_name")
    if user.full_name != full_name:
        audit.record(
            action="user.profile_updated",
            actor=user,
            target=user,
            data={"changes": {"full_name": [user.full_name, full_name]}},
        )
        user.full_name = full_name
        user.save(update_fields=["full_name"])
    return user


def password_changed(*, user: User) -> None:
    audit.record(action="user.password_changed", actor=user, target=user)


def login_attempts_clean() -> int:
    threshold = timezone.now() - settings.AXES_COOLOFF_TIME
    deleted, _ = AccessAttempt.objects.filter(attempt_time__lt=threshold).delete()
    return deleted


# --- Team: invitations and memberships ------------------------------------------------------
def _require_role_grant(*, actor_role: str, role: str) -> None:
    if role not in Role.values:
        raise ServiceError("Choose one of the roles listed.", code="invalid_role", param="role")
    if role == Role.OWNER and not can(actor_role, Permission.GRANT_OWNER):
        raise NotAllowed("Only an owner can make someone an owner.", param="role")


@transaction.atomic
def invitation_create(
    *, organization: Organization, actor: User, email: str, role: str
) -> tuple[Invitation, str]:
    """Invite an address with a role; returns the invitation and its token (only in the e-mail).

    An open invitation to the same address is replaced, so the newest link is the only one that
    works.
    """
    actor_role = require_permission(
        actor=actor, organization=organization, permission=Permission.MANAGE_TEAM
    )
    _require_role_grant(actor_role=actor_role, role=role)
    email = User.objects.normalize_email(email.strip()).lower()
    try:
        Invitation._meta.get_field("email").run_validators(email)
    except ValidationError as exc:
        raise ServiceError(
            "Enter a valid e-mail address.", code="invalid_email", param="email"
        ) from exc
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise Conflict(f"{email} is already a member.", code="already_member", param="email")
    now = timezone.now()
    Invitation.objects.select_for_update().filter(
        organization=organization,
        email__iexact=email,
        accepted_at__isnull=True,
        revoked_at__isnull=True,
    ).update(revoked_at=now)
    token, digest = tokens.new_invitation_token()
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        token_digest=digest,
        invited_by=actor,
        expires_at=now + settings.INVITATION_TTL,
    )
    audit.record(
        action="invitation.created",
        actor=actor,
        organization=organization,
        target=invitation,
        data={"email": email, "role": role},
    )
    queue_email(
        to=email,
        template="invitation",
        context={
            "invitation": invitation,
            "organization": organization,
            "inviter": actor,
            "url": settings.SITE_URL + reverse("invitation", args=[token]),
        },
    )
    return invitation, token


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: User) -> None:
    require_permission(
        actor=actor, organization=invitation.organization, permission=Permission.MANAGE_TEAM
    )
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if not locked.is_open:
        raise Conflict("This invitation was already used or revoked.", code="invitation_closed")
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    audit.record(
        action="invitation.revoked",
        actor=actor,
        organization=locked.organization,
        target=locked,
        data={"email": locked.email},
    )


def invitation_for_token(token: str) -> Invitation:
    """The open, unexpired invitation behind a token, or a ServiceError that says what is wrong."""
    invitation = selectors.invitation_by_digest(tokens.token_digest(token))
    if invitation is None:
        raise NotFound(
            "This invitation link is not valid. Ask the person who invited you for a new one.",
            code="invitation_invalid",
        )
    if invitation.accepted_at is not None:
        raise Conflict(
            "This invitation has already been used. Sign in to reach the organization.",
            code="invitation_used",
        )
    if invitation.revoked_at is not None:
        raise Conflict(
            "This invitation was withdrawn. Ask the person who invited you for a new one.",
            code="invitation_revoked",
        )
    if invitation.is_expired():
        raise Conflict(
            "This invitation has expired. Ask the person who invited you for a new one.",
            code="invitation_expired",
        )
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    """Join the invitation's organization. Single use: the row is locked and closed here."""
    found = invitation_for_token(token)
    invitation = Invitation.objects.select_for_update().get(pk=found.pk)
    invitation_for_token(token)  # re-check under the lock: a concurrent accept may have won
    if invitation.email.lower() != user.email.lower():
        raise NotAllowed(
            f"This invitation is for {invitation.email}. Sign in with that address to accept it.",
            code="invitation_wrong_user",
        )
    membership, created = Membership.objects.get_or_create(
        user=user, organization=invitation.organization, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    if not user.is_verified:
        # The link reached this address, which proves the user owns it.
        user.email_verified_at = invitation.accepted_at
        user.save(update_fields=["email_verified_at"])
    audit.record(
        action="invitation.accepted",
        actor=user,
        organization=invitation.organization,
        target=invitation,
        data={"role": membership.role, "already_member": not created},
    )
    return membership


@transaction.atomic
def signup_with_invitation(*, token: str, password: str, full_name: str) -> Membership:
    invitation = invitation_for_token(token)
    user = user_create(email=invitation.email, password=password, full_name=full_name)
    return invitation_accept(token=token, user=user)


def _lock_team(organization: Organization) -> dict[int, Membership]:
    """Lock every membership of the organization (in pk order) so owner counts cannot race."""
    return {
        m.pk: m
        for m in Membership.objects.select_for_update()
        .filter(organization=organization)
        .select_related("user")
        .order_by("pk")
    }


@transaction.atomic
def membership_change_role(*, membership: Membership, actor: User, role: str) -> Membership:
    organization = membership.organization
    actor_role = require_permission(
        actor=actor, organization=organization, permission=Permission.MANAGE_TEAM
    )
    _require_role_grant(actor_role=actor_role, role=role)
    team = _lock_team(organization)
    target = team.get(membership.pk)
    if target is None:
        raise NotFound("This person is no longer a member.")
    if target.role == role:
        return target
    if target.role == Role.OWNER:
        if not can(actor_role, Permission.GRANT_OWNER):
            raise NotAllowed("Only an owner can change another owner's role.")
        if sum(1 for m in team.values() if m.role == Role.OWNER) == 1:
            raise Conflict(
                "An organization needs at least one owner. Make someone else an owner first.",
                code="last_owner",
            )
    previous = target.role
    target.role = role
    target.save(update_fields=["role"])
    audit.record(
        action="membership.role_changed",
        actor=actor,
        organization=organization,
        target=target,
        data={"user": target.user.email, "from": previous, "to": role},
    )
    return target


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User) -> None:
    """Remove a member. Anyone may leave; removing others needs team management rights."""
    organization = membership.organization
    leaving = membership.user_id == actor.pk
    actor_role = require_permission(
        actor=actor,
        organization=organization,
        permission=Permission.VIEW_TEAM if leaving else Permission.MANAGE_TEAM,
    )
    team = _lock_team(organization)
    target = team.get(membership.pk)
    if target is None:
        raise NotFound("This person is no longer a member.")
    if target.role == Role.OWNER:
        if not leaving and not can(actor_role, Permission.GRANT_OWNER):
            raise NotAllowed("Only an owner can remove another owner.")
        if sum(1 for m in team.values() if m.role == Role.OWNER) == 1:
            raise Conflict(
                "An organization needs at least one owner. Make someone else an owner first.",
                code="last_owner",
            )
    target.delete()
    audit.record(
        action="membership.left" if leaving else "membership.removed",
        actor=actor,
        organization=organization,
        data={"user": target.user.email, "role": target.role},
    )


# --- Back office: staff decisions about an organization ---------------------------------------
# Staff act through Django permissions (granted to the staff groups in backoffice/roles.py),
# not through a membership. Every decision is audited with its reason.
REASON_MAX = 500
STAFF_EDITABLE = frozenset(
    {"name", "legal_name", "country", "billing_email", "tax_id", "address", "tier", "account_owner"}
)


def lock_organization(organization: Organization) -> Organization:
    """The organization's row, locked until the transaction ends: the one lock that serializes
    changes to its terms, status and negotiated rates. Call inside a transaction."""
    return Organization.objects.select_for_update(of=("self",)).get(pk=organization.pk)


def _clean_reason(reason: str, *, required: bool) -> str:
    reason = (reason or "").strip()
    if required and not reason:
        raise ServiceError("Give a reason: the customer and the audit log see it.", param="reason")
    if len(reason) > REASON_MAX:
        raise ServiceError(f"Keep the reason to {REASON_MAX} characters.", param="reason")
    return reason


@transaction.atomic
def organization_staff_update(
    *, organization: Organization, actor: User, changes: dict[str, object]
) -> Organization:
    """Sales edits a customer's details, tier and account owner (the admin's change form).

    Terms, credit limit and status are not editable here: they have their own services.
    """
    require_staff_permission(actor, "accounts.change_organization", "change organizations")
    unknown = set(changes) - STAFF_EDITABLE
    if unknown:
        raise ServiceError(f"These fields cannot be changed here: {', '.join(sorted(unknown))}.")
    locked = lock_organization(organization)
    before = {name: getattr(locked, name) for name in changes}
    for name, value in changes.items():
        setattr(locked, name, value)
    if locked.account_owner is not None and not locked.account_owner.is_staff:
        raise ServiceError("The account owner must be a staff member.", param="account_owner")
    try:
        locked.full_clean()
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise ServiceError(messages[0], param=field) from exc
    diff = {
        name: [str(before[name] or ""), str(getattr(locked, name) or "")]
        for name in changes
        if before[name] != getattr(locked, name)
    }
    if diff:
        locked.save(update_fields=sorted(changes))
        audit.record(
            action="organization.updated",
            actor=actor,
            organization=locked,
            target=locked,
            data={"changes": diff},
        )
    return locked


PAYMENT_DAYS_RANGE = (1, 120)


def organization_terms_write(
    *,
    organization: Organization,
    actor: User,
    payment_terms: str,
    payment_days: int,
    credit_limit: object,
    reason: str = "",
) -> Organization:
    """Write an organization's payment terms. `organization` must be locked by the caller
    (billing.terms, which checks the credit limit against the balance under that lock)."""
    require_staff_permission(actor, "accounts.approve_terms", "approve payment terms")
    if payment_terms not in Organization.PaymentTerms.values:
        raise ServiceError("Choose card or invoice terms.", param="payment_terms")
    if (
        not isinstance(payment_days, int)
        or isinstance(payment_days, bool)
        or not PAYMENT_DAYS_RANGE[0] <= payment_days <= PAYMENT_DAYS_RANGE[1]
    ):
        raise ServiceError(
            f"Give the payment days as a whole number from {PAYMENT_DAYS_RANGE[0]} to "
            f"{PAYMENT_DAYS_RANGE[1]}.",
            param="payment_days",
        )
    try:
        limit = Decimal(str(credit_limit))
    except InvalidOperation as exc:
        raise ServiceError("Give the credit limit as an amount.", param="credit_limit") from exc
    if not limit.is_finite() or limit < 0 or limit != limit.quantize(Decimal("0.01")):
        raise ServiceError(
            "Give the credit limit as an amount of at least 0.00, in cents.", param="credit_limit"
        )
    if limit >= Decimal("1e12"):
        raise ServiceError("That credit limit is too large.", param="credit_limit")
    reason = _clean_reason(reason, required=False)
    before = {
        "payment_terms": organization.payment_terms,
        "payment_days": organization.payment_days,
        "credit_limit": str(organization.credit_limit),
    }
    organization.payment_terms = payment_terms
    organization.payment_days = payment_days
    organization.credit_limit = limit
    after = {
        "payment_terms": payment_terms,
        "payment_days": payment_days,
        "credit_limit": str(limit),
    }
    if before == after:
        raise Conflict(
            f"{organization.name} already has these terms; nothing changed.", code="unchanged"
        )
    organization.save(update_fields=["payment_terms", "payment_days", "credit_limit"])
    audit.record(
        action="organization.terms_changed",
        actor=actor,
        organization=organization,
        target=organization,
        data={"from": before, "to": after},
        reason=reason,
    )
    return organization


@transaction.atomic
def organization_suspend(*, organization: Organization, actor: User, reason: str) -> Organization:
    """Suspend: the organization can no longer reserve, pay or use its API keys, and its
    members see `reason` on every page. Cached API keys are dropped after the commit so the
    suspension reaches the API at once rather than within the key cache's few seconds."""
    require_staff_permission(
        actor, "accounts.suspend_organization", "suspend or reactivate organizations"
    )
    reason = _clean_reason(reason, required=True)
    locked = lock_organization(organization)
    if not locked.is_active:
        raise Conflict(f"{locked.name} is already suspended.", code="already_suspended")
    locked.status = Organization.Status.SUSPENDED
    locked.suspended_reason = reason
    locked.save(update_fields=["status", "suspended_reason"])
    audit.record(
        action="organization.suspended",
        actor=actor,
        organization=locked,
        target=locked,
        reason=reason,
    )
    _forget_cached_keys_after_commit(locked)
    return locked


@transaction.atomic
def organization_reactivate(
    *, organization: Organization, actor: User, reason: str = ""
) -> Organization:
    require_staff_permission(
        actor, "accounts.suspend_organization", "suspend or reactivate organizations"
    )
    reason = _clean_reason(reason, required=False)
    locked = lock_organization(organization)
    if locked.is_active:
        raise Conflict(f"{locked.name} is not suspended.", code="not_suspended")
    previous = locked.suspended_reason
    locked.status = Organization.Status.ACTIVE
    locked.suspended_reason = ""
    locked.save(update_fields=["status", "suspended_reason"])
    audit.record(
        action="organization.reactivated",
        actor=actor,
        organization=locked,
        target=locked,
        data={"suspended_reason": previous},
        reason=reason,
    )
    _forget_cached_keys_after_commit(locked)
    return locked


def _forget_cached_keys_after_commit(organization: Organization) -> None:
    pk = organization.pk
    transaction.on_commit(lambda: forget_cached_keys(organization_id=pk))


@transaction.atomic
def organization_mark_reviewed(*, organization: Organization, actor: User) -> Organization:
    """Sales has looked at a new customer: it leaves the dashboard's review queue."""
    require_staff_permission(actor, "accounts.review_organization", "review organizations")
    locked = lock_organization(organization)
    if locked.reviewed_at is not None:
        raise Conflict(
            f"{locked.name} was already reviewed on {locked.reviewed_at:%d %b %Y}.",
            code="already_reviewed",
        )
    locked.reviewed_at = timezone.now()
    locked.reviewed_by = actor
    locked.save(update_fields=["reviewed_at", "reviewed_by"])
    audit.record(action="organization.reviewed", actor=actor, organization=locked, target=locked)
    return locked
