"""Who may do what inside an organization: the one permission matrix.

Views, services and the API ask `can(role, Permission.X)`; nothing else encodes roles.
"""

from enum import StrEnum

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    BILLING = "billing", "Billing"


class Permission(StrEnum):
    VIEW_ORGANIZATION = "organization:view"
    MANAGE_ORGANIZATION = "organization:manage"
    VIEW_TEAM = "team:view"
    MANAGE_TEAM = "team:manage"
    GRANT_OWNER = "team:grant_owner"
    VIEW_RESERVATIONS = "reservations:view"
    MANAGE_RESERVATIONS = "reservations:manage"
    MANAGE_API_KEYS = "api_keys:manage"
    VIEW_BILLING = "billing:view"
    MANAGE_BILLING = "billing:manage"
    VIEW_USAGE = "usage:view"
    # Reaching the nodes (SSH endpoints, the kubeconfig): for the people who run the work,
    # not for Billing, who may see a reservation to pay for it.
    USE_HARDWARE = "hardware:use"


P = Permission
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Role.OWNER: frozenset(Permission),
    Role.ADMIN: frozenset(
        {
            P.VIEW_ORGANIZATION,
            P.MANAGE_ORGANIZATION,
            P.VIEW_TEAM,
            P.MANAGE_TEAM,
            P.VIEW_RESERVATIONS,
            P.MANAGE_RESERVATIONS,
            P.MANAGE_API_KEYS,
            P.VIEW_BILLING,
            P.MANAGE_BILLING,
            P.VIEW_USAGE,
            P.USE_HARDWARE,
        }
    ),
    Role.MEMBER: frozenset(
        {
            P.VIEW_ORGANIZATION,
            P.VIEW_TEAM,
            P.VIEW_RESERVATIONS,
            P.MANAGE_RESERVATIONS,
            P.MANAGE_API_KEYS,
            P.VIEW_USAGE,
            P.USE_HARDWARE,
        }
    ),
    Role.BILLING: frozenset(
        {
            P.VIEW_ORGANIZATION,
            P.VIEW_TEAM,
            P.VIEW_RESERVATIONS,
            P.VIEW_BILLING,
            P.MANAGE_BILLING,
            P.VIEW_USAGE,
        }
    ),
}

# What each permission means, for the team page's explanation of roles.
PERMISSION_LABELS: dict[Permission, str] = {
    P.VIEW_ORGANIZATION: "See the organization's dashboard",
    P.MANAGE_ORGANIZATION: "Edit organization details",
    P.VIEW_TEAM: "See the team",
    P.MANAGE_TEAM: "Invite, remove and change roles of members",
    P.GRANT_OWNER: "Make or remove owners",
    P.VIEW_RESERVATIONS: "See reservations",
    P.MANAGE_RESERVATIONS: "Reserve, extend and cancel capacity",
    P.MANAGE_API_KEYS: "Create and revoke API keys",
    P.VIEW_BILLING: "See payments and invoices",
    P.MANAGE_BILLING: "Pay and manage payment methods",
    P.VIEW_USAGE: "See token usage",
    P.USE_HARDWARE: "Reach the nodes: SSH access and kubeconfigs",
}


def can(role: str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def role_matrix() -> list[tuple[str, list[bool]]]:
    """Rows of (permission label, [allowed for each role in Role order])."""
    return [
        (label, [can(role, perm) for role in Role.values])
        for perm, label in PERMISSION_LABELS.items()
    ]


# The scopes a role may put on a key it makes (and keep using while the role lasts). Scope
# names are spelled out here because the API key model imports this module; a test checks
# every name is a real scope. Service keys (the organization's own) take any scope an owner
# grants.
ALL_SCOPES = "*"
ROLE_SCOPE_CEILING: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset({ALL_SCOPES}),
    Role.ADMIN: frozenset({ALL_SCOPES}),
    Role.MEMBER: frozenset(
        {"reservations:read", "reservations:write", "usage:write", "inference", "keys:read"}
    ),
    Role.BILLING: frozenset({"billing:read", "keys:read"}),
}


def scopes_beyond_role(role: str | None, scopes: list[str]) -> list[str]:
    """The scopes in `scopes` a key made by someone with `role` may not carry (sorted); every
    scope when `role` is None (not a member)."""
    ceiling = ROLE_SCOPE_CEILING.get(role or "", frozenset())
    if ALL_SCOPES in ceiling:
        return []
    return sorted(set(scopes) - ceiling)


def may_make_service_keys(role: str) -> bool:
    """Service keys outlive every member, so only an owner makes (rotates, revokes) them."""
    return role == Role.OWNER


def may_manage_others_keys(role: str) -> bool:
    """A member revokes and rotates only the keys they made."""
    return role in (Role.OWNER, Role.ADMIN)


def key_lists_only_own(role: str | None) -> bool:
    """A member's keys:read key lists only the keys that member made."""
    return role == Role.MEMBER
