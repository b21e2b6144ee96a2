"""The organization's side navigation and the dashboard's getting-started tasks, each shown
only to a role whose permission lets it through: the permission named beside a link is the one
its view asks `org_member` for (tests/portal/test_navigation.py opens every link as every role
to keep the two equal)."""

from dataclasses import dataclass

from django.urls import reverse

from accounts.models import Membership, User
from accounts.permissions import Permission, can

P = Permission


@dataclass(frozen=True)
class NavLink:
    label: str
    url_name: str
    permission: Permission
    # The pages (URL names) under this link, marked as the current section.
    pages: frozenset[str]


def _link(label: str, url_name: str, permission: Permission, *more: str) -> NavLink:
    return NavLink(label, url_name, permission, frozenset({url_name, *more}))


NAV_LINKS: tuple[NavLink, ...] = (
    _link("Overview", "dashboard", P.VIEW_ORGANIZATION),
    _link(
        "Find capacity",
        "capacity-search",
        P.VIEW_RESERVATIONS,
        "capacity-calendar",
        "reservation-new",
    ),
    _link(
        "Reservations",
        "reservation-list",
        P.VIEW_RESERVATIONS,
        "reservation-detail",
        "reservation-cancel",
        "reservation-extend",
    ),
    _link("Token usage", "usage", P.VIEW_USAGE),
    _link("API keys", "api-keys", P.VIEW_ORGANIZATION),
    _link("Billing", "billing", P.VIEW_BILLING, "card-add"),
    _link("Team", "team", P.VIEW_TEAM),
    _link("Settings", "organization-settings", P.MANAGE_ORGANIZATION),
)


@dataclass(frozen=True)
class NavItem:
    label: str
    url: str
    current: bool


def nav_for(membership: Membership, page: str | None) -> list[NavItem]:
    """The links `membership`'s role may open, `page` (a URL name) marking the current one."""
    slug = membership.organization.slug
    return [
        NavItem(link.label, reverse(link.url_name, args=[slug]), page in link.pages)
        for link in NAV_LINKS
        if can(membership.role, link.permission)
    ]


@dataclass(frozen=True)
class Task:
    key: str
    title: str
    detail: str
    done: bool
    action: str = ""  # the button's label, shown while the task is not done
    url: str = ""


def getting_started(
    *,
    user: User,
    membership: Membership,
    details_complete: bool,
    member_count: int,
    has_reservations: bool,
) -> list[Task]:
    """The dashboard's first steps that `membership`'s role can take, in order. Verifying the
    e-mail address is everyone's own; the rest need the permission of the page they lead to."""
    slug = membership.organization.slug
    role = membership.role
    tasks = [
        Task(
            "verify-email",
            "Verify your e-mail address",
            "Needed before you reserve capacity or create API keys.",
            user.is_verified,
        )
    ]
    if can(role, P.MANAGE_ORGANIZATION):
        tasks.append(
            Task(
                "organization-details",
                "Add your legal and billing details",
                "They appear on invoices and receipts.",
                details_complete,
                "Add details",
                reverse("organization-settings", args=[slug]),
            )
        )
    if can(role, P.MANAGE_TEAM):
        tasks.append(
            Task(
                "invite-team",
                "Invite your team",
                "Give colleagues their own sign-in and the role they need.",
                member_count > 1,
                "Invite",
                reverse("team", args=[slug]) + "#invite",
            )
        )
    if can(role, P.MANAGE_RESERVATIONS):
        tasks.append(
            Task(
                "first-block",
                "Reserve your first GPU block",
                "Pick a GPU model, a region, a node count and a time window; pay by card or "
                "invoice.",
                has_reservations,
                "Find capacity",
                reverse("capacity-search", args=[slug]),
            )
        )
    return tasks
