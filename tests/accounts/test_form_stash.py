"""A form stopped by the password re-check comes back as it was typed: the fields are kept in
the session for FORM_STASH_MAX_AGE, for this user and this form only, never a secret."""

from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.http import QueryDict
from django.test import RequestFactory
from django.urls import reverse

from accounts.form_stash import SESSION_KEY, form_stash_save, form_stash_take
from accounts.models import ApiKey, Invitation, Membership
from accounts.permissions import Role
from tests.conftest import client_for, member_of
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

CONFIRM = reverse("confirm-password")
TYPED = {
    "name": "CI runner",
    "kind": "personal",
    "scopes": ["reservations:read", "usage:write", "inference"],
    "expires_at": "2031-05-04T10:30",
    "csrfmiddlewaretoken": "not-kept",
}


class _Values(HTMLParser):
    """The values a browser would submit for the form whose action is `action` (or the only
    form posting to the page itself when `action` is empty)."""

    def __init__(self, action: str) -> None:
        super().__init__()
        self.action, self.inside, self.select = action, False, ""
        self.values: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("method") == "post" and (a.get("action") or "") == self.action
        elif not self.inside:
            return
        elif tag == "input" and a.get("name") and a.get("type") not in ("hidden", "submit"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                return
            self.values.setdefault(a["name"] or "", []).append(a.get("value") or "")
        elif tag == "select":
            self.select = a.get("name") or ""
        elif tag == "option" and self.select and "selected" in a:
            self.values.setdefault(self.select, []).append(a.get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.select = ""


def form_values(html: str, action: str = "") -> dict[str, list[str]]:
    parser = _Values(action)
    parser.feed(html)
    return parser.values


def keys_page(org) -> str:
    return reverse("api-keys", args=[org.slug])


def _stopped_then_confirmed(client, org, data=TYPED):
    asked = client.post(keys_page(org), data)
    assert (asked.status_code, asked["Location"]) == (302, f"{CONFIRM}?next={keys_page(org)}")
    confirmed = client.post(CONFIRM, {"password": PASSWORD, "next": keys_page(org)})
    assert (confirmed.status_code, confirmed["Location"]) == (302, keys_page(org))


BLANK = {"name": [""], "kind": ["personal"], "scopes": ["reservations:read"], "expires_at": [""]}


def test_a_key_form_stopped_for_the_password_comes_back_as_typed(organization, owner):
    client = client_for(owner)
    _stopped_then_confirmed(client, organization)
    assert ApiKey.objects.count() == 0  # nothing was sent on the user's behalf
    page = client.get(keys_page(organization))
    assert page.status_code == 200
    assert form_values(page.text) == {
        "name": ["CI runner"],
        "kind": ["personal"],
        "scopes": ["reservations:read", "usage:write", "inference"],
        "expires_at": ["2031-05-04T10:30"],
    }
    assert "Password confirmed. The form is as you left it: check it and press Create key." in (
        page.text
    )
    assert client.session[SESSION_KEY] == {}  # read once
    assert form_values(client.get(keys_page(organization)).text) == BLANK


def test_unticked_boxes_come_back_unticked(organization, owner):
    client = client_for(owner)
    _stopped_then_confirmed(client, organization, {"name": "No scopes yet"})
    assert form_values(client.get(keys_page(organization)).text) == {
        "name": ["No scopes yet"],
        "kind": ["personal"],
        "expires_at": [""],
    }


def test_the_session_holds_only_the_named_fields(organization, owner):
    client = client_for(owner)
    client.post(keys_page(organization), TYPED)
    stash = client.session[SESSION_KEY][keys_page(organization)]
    assert stash["user"] == owner.pk
    assert stash["fields"] == {
        "name": ["CI runner"],
        "kind": ["personal"],
        "scopes": ["reservations:read", "usage:write", "inference"],
        "expires_at": ["2031-05-04T10:30"],
    }


def test_secrets_are_never_kept_whatever_a_view_names(owner):
    request = RequestFactory().post("/")
    request.user = owner
    request.session = {}
    data = QueryDict(mutable=True)
    for name in ("email", "password", "old_password", "card_number", "cvc", "csrfmiddlewaretoken"):
        data[name] = "typed"
    form_stash_save(request, name="/x/", data=data, fields=list(data))
    assert request.session[SESSION_KEY]["/x/"]["fields"] == {"email": ["typed"]}
    assert form_stash_take(request, name="/x/") == {"email": ["typed"]}


def test_an_expired_stash_is_ignored(organization, owner, settings):
    settings.FORM_STASH_MAX_AGE = timedelta(minutes=3)
    client = client_for(owner)
    client.post(keys_page(organization), TYPED)
    session = client.session
    session[SESSION_KEY][keys_page(organization)]["saved_at"] -= 3 * 60
    session.save()
    client.post(CONFIRM, {"password": PASSWORD, "next": keys_page(organization)})
    page = client.get(keys_page(organization))
    assert form_values(page.text) == BLANK
    assert "Password confirmed." not in page.text
    assert client.session[SESSION_KEY] == {}


def test_a_stash_just_inside_its_age_is_used(organization, owner, settings):
    settings.FORM_STASH_MAX_AGE = timedelta(minutes=3)
    client = client_for(owner)
    client.post(keys_page(organization), TYPED)
    session = client.session
    session[SESSION_KEY][keys_page(organization)]["saved_at"] -= 3 * 60 - 30
    session.save()
    assert form_values(client.get(keys_page(organization)).text)["name"] == ["CI runner"]


def test_another_user_or_session_never_sees_it(organization, owner):
    second_owner = member_of(organization, Role.OWNER)
    client = client_for(owner)
    client.post(keys_page(organization), TYPED)
    assert form_values(client_for(second_owner).get(keys_page(organization)).text) == BLANK
    assert form_values(client_for(owner).get(keys_page(organization)).text) == BLANK
    # A stash written by someone else (a session handed over) is dropped, not shown.
    session = client.session
    session[SESSION_KEY][keys_page(organization)]["user"] = second_owner.pk
    session.save()
    assert form_values(client.get(keys_page(organization)).text) == BLANK


def test_a_stash_does_not_leak_into_another_form(organization, other_organization, owner):
    Membership.objects.create(user=owner, organization=other_organization, role=Role.OWNER)
    client = client_for(owner)
    client.post(keys_page(organization), TYPED)
    team = client.get(reverse("team", args=[organization.slug]))
    assert form_values(team.text, reverse("team-invite", args=[organization.slug])) == {
        "email": [""],
        "role": ["member"],
    }
    assert form_values(client.get(keys_page(other_organization)).text) == BLANK
    assert form_values(client.get(keys_page(organization)).text)["name"] == ["CI runner"]


def test_an_invitation_comes_back_as_typed(organization, owner):
    client = client_for(owner)
    invite = reverse("team-invite", args=[organization.slug])
    team = reverse("team", args=[organization.slug])
    asked = client.post(invite, {"email": "new.person@example.com", "role": Role.BILLING})
    assert asked["Location"] == f"{CONFIRM}?next={team}"
    client.post(CONFIRM, {"password": PASSWORD, "next": team})
    page = client.get(team)
    assert form_values(page.text, invite) == {
        "email": ["new.person@example.com"],
        "role": ["billing"],
    }
    assert "check it and press Send invitation." in page.text
    assert Invitation.objects.count() == 0


def test_a_role_change_comes_back_chosen_and_waits_for_save(organization, owner):
    teammate = Membership.objects.get(user=member_of(organization, Role.MEMBER))
    client = client_for(owner)
    role_url = reverse("member-role", args=[organization.slug, teammate.pk])
    team = reverse("team", args=[organization.slug])
    client.post(role_url, {"role": Role.ADMIN}, HTTP_HX_REQUEST="true")
    client.post(CONFIRM, {"password": PASSWORD, "next": team})
    page = client.get(team)
    assert form_values(page.text, role_url) == {"role": ["admin"]}
    assert 'data-testid="save-role"' in page.text
    teammate.refresh_from_db()
    assert teammate.role == Role.MEMBER
    saved = client.post(role_url, {"role": Role.ADMIN})
    assert saved["Location"] == team
    teammate.refresh_from_db()
    assert teammate.role == Role.ADMIN
    assert form_values(client.get(team).text, role_url) == {"role": ["admin"]}
