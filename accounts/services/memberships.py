"""The team: invitations, and changing or removing memberships."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from core import audit
from core.emails import queue_email
from core.errors import Conflict, NotAllowed, NotFound, ServiceError
from core.ratelimit import email_rate_enforce

from .. import selectors, tokens
from ..api_keys import api_keys_revoke_for_maker
from ..api_keys.authentication import api_key_cache_forget_maker
from ..guards import require_permission, require_verified_email
from ..models import Invitation, Membership, Organization, User
from ..permissions import Permission, Role, can


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
    works. Only a verified address may invite (an unverified account could be anyone's), and
    invitations are limited per sender, per invited address and per organization
    (EMAIL_RATE_LIMITS), so the portal cannot be used to flood an inbox.
    """
    actor_role = require_permission(
        actor=actor, organization=organization, permission=Permission.MANAGE_TEAM
    )
    require_verified_email(actor)
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
    _invitation_rate_enforce(organization=organization, actor=actor, email=email)
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


def _invitation_rate_enforce(*, organization: Organization, actor: User, email: str) -> None:
    later = "Try again in {minutes} minutes."
    email_rate_enforce(
        kind="invitation_sender",
        ident=str(actor.pk),
        message=f"You have sent {{limit}} invitations this hour, the most one person may. {later}",
        param="email",
    )
    email_rate_enforce(
        kind="invitation_recipient",
        ident=email,
        message=f"{email} was invited {{limit}} times this hour, the most for one address. {later}",
        param="email",
    )
    email_rate_enforce(
        kind="invitation_organization",
        ident=str(organization.pk),
        message=(
            f"{organization.name} has sent {{limit}} invitations this hour. {later} "
            "Support can raise the limit for your organization."
        ),
        param="email",
    )


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
def membership_role_change(*, membership: Membership, actor: User, role: str) -> Membership:
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
    # Keys beyond the new role stop at the next request here (the key cache checks the role).
    transaction.on_commit(lambda: api_key_cache_forget_maker(user_id=target.user_id))
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
    api_keys_revoke_for_maker(
        user=target.user,
        actor=actor,
        organization=organization,
        reason="membership.left" if leaving else "membership.removed",
    )
