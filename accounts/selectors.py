"""Reads. Every tenant query is scoped to an organization (or to the user's own memberships)."""

from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet
from django.utils import timezone

from .models import Invitation, Membership, Organization, User


def memberships_for_user(user: User) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(user=user)
        .select_related("organization")
        .order_by("organization__name")
    )


def membership_for(*, user: User | AnonymousUser, slug: str) -> Membership | None:
    """The user's membership in the organization with this slug, or None when not a member."""
    if not user.is_authenticated:
        return None
    return (
        Membership.objects.filter(user=user, organization__slug=slug)
        .select_related("organization", "user")
        .first()
    )


def memberships_for_org(organization: Organization) -> QuerySet[Membership]:
    """The team: people, not the identities service keys act as."""
    return (
        Membership.objects.filter(organization=organization, user__is_service=False)
        .select_related("user")
        .order_by("created_at", "id")
    )


def membership_for_org(organization: Organization, membership_id: int) -> Membership | None:
    return memberships_for_org(organization).filter(pk=membership_id).first()


def open_invitations_for_org(organization: Organization) -> QuerySet[Invitation]:
    return (
        Invitation.objects.filter(
            organization=organization, accepted_at__isnull=True, revoked_at__isnull=True
        )
        .select_related("invited_by")
        .order_by("-created_at")
    )


def open_invitation_for_org(organization: Organization, invitation_id: int) -> Invitation | None:
    return open_invitations_for_org(organization).filter(pk=invitation_id).first()


def invitation_by_digest(digest: str) -> Invitation | None:
    return (
        Invitation.objects.filter(token_digest=digest)
        .select_related("organization", "invited_by")
        .first()
    )


def owner_count(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization, role="owner").count()


def slug_taken(slug: str) -> bool:
    return Organization.objects.filter(slug=slug).exists()


def pending_invitation_count(organization: Organization) -> int:
    return open_invitations_for_org(organization).filter(expires_at__gt=timezone.now()).count()
