"""Guards used by every app: a verified e-mail, an active organization, a member's permission,
a staff member's permission. Each raises `core.errors.NotAllowed` (or NotFound) or passes."""

from django.conf import settings

from core.errors import NotAllowed, NotFound

from .models import Membership, Organization, User
from .permissions import Permission, can


def require_verified_email(user: User) -> None:
    """The one gate for actions that cost money or hand out access (reserve, create keys)."""
    if not user.is_verified:
        raise NotAllowed(
            "Verify your e-mail address first: use the link we sent you, or send a new one.",
            code="email_unverified",
        )


def suspension_message(organization: Organization) -> str:
    """What a member of a suspended organization is told, wherever they meet the suspension."""
    reason = organization.suspended_reason.strip().rstrip(".")
    reason = f": {reason}" if reason else ""
    return (
        f"{organization.name} is suspended{reason}. Contact {settings.SUPPORT_EMAIL} to "
        "reactivate it."
    )


def require_active_organization(organization: Organization) -> None:
    if not organization.is_active:
        raise NotAllowed(suspension_message(organization), code="organization_suspended")


def require_permission(*, actor: User, organization: Organization, permission: Permission) -> str:
    """Return the actor's role in the organization, or raise if the role lacks `permission`
    (or the actor was deactivated: a session or key that outlived that must not act)."""
    if not actor.is_active:
        raise NotAllowed("This account is deactivated.", code="user_inactive")
    membership = Membership.objects.filter(user=actor, organization=organization).first()
    if membership is None:
        raise NotFound("Organization not found.")
    if not can(membership.role, permission):
        raise NotAllowed(
            f"Your role ({membership.get_role_display().lower()}) does not allow this.",
        )
    return membership.role
