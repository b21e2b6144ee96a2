"""The side navigation and the dashboard's tasks follow the role: each role is shown exactly the
links and tasks it may act on, and every link shown opens (every one hidden is refused)."""

import re

import pytest
from django.urls import reverse

from accounts.permissions import Role
from portal.navigation import NAV_LINKS
from tests.conftest import client_for, member_of

pytestmark = pytest.mark.django_db

NAV = {
    Role.OWNER: [
        "Overview",
        "Find capacity",
        "Reservations",
        "Token usage",
        "API keys",
        "Billing",
        "Team",
        "Settings",
    ],
    Role.ADMIN: [
        "Overview",
        "Find capacity",
        "Reservations",
        "Token usage",
        "API keys",
        "Billing",
        "Team",
        "Settings",
    ],
    Role.MEMBER: ["Overview", "Find capacity", "Reservations", "Token usage", "API keys", "Team"],
    Role.BILLING: [
        "Overview",
        "Find capacity",
        "Reservations",
        "Token usage",
        "API keys",
        "Billing",
        "Team",
    ],
}
TASKS = {
    Role.OWNER: ["verify-email", "organization-details", "invite-team", "first-block"],
    Role.ADMIN: ["verify-email", "organization-details", "invite-team", "first-block"],
    Role.MEMBER: ["verify-email", "first-block"],
    Role.BILLING: ["verify-email"],
}
# The owner is alone in the organization (so asked to invite); any other role makes two.
BUTTONS = {
    Role.OWNER: ["Add details", "Invite", "Find capacity"],
    Role.ADMIN: ["Add details", "Find capacity"],
    Role.MEMBER: ["Find capacity"],
    Role.BILLING: [],
}


def _client(organization, owner, role):
    return client_for(owner if role == Role.OWNER else member_of(organization, role))


def _nav(html: str) -> list[tuple[str, str, bool]]:
    nav = re.search(r'<nav class="sidenav".*?</nav>', html, re.S)
    assert nav is not None
    return [
        (label, href, bool(current))
        for href, current, label in re.findall(
            r'<a href="([^"]+)"( aria-current="page")?>([^<]+)</a>', nav.group(0)
        )
    ]


def _tasks(html: str) -> tuple[list[str], list[str]]:
    tasks = re.search(r'data-testid="getting-started">.*?</section>', html, re.S)
    assert tasks is not None
    return (
        re.findall(r'data-task="([a-z-]+)"', tasks.group(0)),
        re.findall(r'<a class="btn btn-small" href="[^"]+">([^<]+)</a>', tasks.group(0)),
    )


@pytest.mark.parametrize("role", list(Role))
def test_the_navigation_lists_exactly_what_the_role_may_open(organization, owner, role):
    client = _client(organization, owner, role)
    page = client.get(reverse("dashboard", args=[organization.slug]))
    nav = _nav(page.text)
    assert [label for label, _href, _current in nav] == NAV[role]
    assert [label for label, _href, current in nav if current] == ["Overview"]
    shown = {href for _label, href, _current in nav}
    for link in NAV_LINKS:
        url = reverse(link.url_name, args=[organization.slug])
        assert client.get(url).status_code == (200 if url in shown else 403), (role, url)


@pytest.mark.parametrize("role", list(Role))
def test_the_dashboard_lists_exactly_the_tasks_the_role_may_do(organization, owner, role):
    page = _client(organization, owner, role).get(reverse("dashboard", args=[organization.slug]))
    assert _tasks(page.text) == (TASKS[role], BUTTONS[role])


def test_the_current_section_follows_the_page(organization, owner):
    client = client_for(owner)
    slug = organization.slug
    for url_name, label in [
        ("capacity-calendar", "Find capacity"),
        ("usage", "Token usage"),
        ("api-keys", "API keys"),
        ("organization-settings", "Settings"),
    ]:
        response = client.get(reverse(url_name, args=[slug]))
        assert response.status_code == 200
        assert [lbl for lbl, _h, current in _nav(response.text) if current] == [label]


@pytest.mark.parametrize(
    ("role", "change"),
    [
        (Role.OWNER, "Change"),
        (Role.ADMIN, "Change"),
        (Role.BILLING, "An owner or admin can change it."),
    ],
)
def test_the_billing_page_offers_to_change_the_e_mail_only_to_who_may(
    organization, owner, role, change
):
    client = _client(organization, owner, role)
    page = client.get(reverse("billing", args=[organization.slug]))
    found = re.search(r'data-testid="billing-email-change">(.*?)</div>', page.text)
    assert found is not None
    settings_url = reverse("organization-settings", args=[organization.slug])
    link = f'<a href="{settings_url}">Change</a>'
    assert found.group(1) == (link if change == "Change" else change)
    if change == "Change":
        assert client.get(settings_url).status_code == 200
