"""Every API route and method names the scope it needs, a key without that scope (but with
every other) gets 403 missing_scope and changes nothing, and a key with only that scope gets
past the check. A new endpoint without `required_scopes` fails this test.

HEAD and OPTIONS are walked too, on every route: they need the scope of the route's GET, and
where there is no GET no key may use them (the check fails closed)."""

import json

import pytest
from django.test import Client
from django.urls import URLPattern

from accounts import api_keys
from accounts.models import ApiKey
from portal import api_urls

from .test_isolation_matrix import _state

ALL = {s.value for s in ApiKey.Scope}
UNSCOPED = {"schema/", "docs/"}  # public documents


def _cases() -> list[tuple[str, str, str | None]]:
    cases: list[tuple[str, str, str | None]] = []
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        route = str(pattern.pattern)
        if route in UNSCOPED:
            continue
        view = pattern.callback.view_class
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view, method):
                needed = getattr(view, "required_scopes", {}).get(method.upper())
                assert needed in ALL, f"{route} {method.upper()} names no scope"
                cases.append((route, method, needed))
        # Not listed by any view: they read what GET reads, so they need its scope.
        read = getattr(view, "required_scopes", {}).get("GET") if hasattr(view, "get") else None
        cases.append((route, "head", read))
        cases.append((route, "options", read))
    return cases


def _call(key: str, route: str, method: str):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    path = "/api/v1/" + route.replace("<str:public_id>", "rsv_doesnotexist0")
    if method in ("get", "head", "options"):
        return getattr(client, method)(path)
    return getattr(client, method)(path, json.dumps({}), content_type="application/json")


def _refused(response, method: str, status: int, code: str) -> bool:
    # A HEAD answer has no body to read the error from; its status says enough.
    if response.status_code != status:
        return False
    return method == "head" or response.json()["error"]["code"] == code


@pytest.mark.parametrize(("route", "method", "needed"), [c for c in _cases() if c[2] is not None])
def test_each_endpoint_needs_its_scope(catalog, organization, owner, route, method, needed):
    _record, without = api_keys.api_key_create(
        organization=organization, actor=owner, name="without", scopes=sorted(ALL - {needed})
    )
    _record, only = api_keys.api_key_create(
        organization=organization, actor=owner, name="only", scopes=[needed]
    )
    before = _state()
    refused = _call(without, route, method)
    assert _refused(refused, method, 403, "missing_scope"), (route, method, refused.content)
    assert _state() == before
    allowed = _call(only, route, method)
    assert allowed.status_code not in (401, 403, 500), (route, method, allowed.content)


# The scope ceiling per role (accounts/permissions.py), written out again so that a change to
# the table is a change to this test too.
CEILING = {
    "owner": ALL,
    "admin": ALL,
    "member": {"reservations:read", "reservations:write", "usage:write", "inference", "keys:read"},
    "billing": {"billing:read", "keys:read"},
}


@pytest.mark.parametrize("scope", sorted(ALL))
@pytest.mark.parametrize("role", sorted(CEILING))
def test_each_role_mints_and_uses_only_the_scopes_its_ceiling_holds(
    catalog, organization, owner, role, scope
):
    from accounts.models import Membership
    from accounts.permissions import Role, scopes_beyond_role
    from tests.conftest import member_of

    assert (scopes_beyond_role(role, [scope]) == []) == (scope in CEILING[role])
    maker = owner if role == Role.OWNER else member_of(organization, role)
    # Minted while an admin (any scope), then moved to the role: every cache fill checks it.
    Membership.objects.filter(user=maker).update(role=Role.ADMIN)
    _record, key = api_keys.api_key_create(
        organization=organization, actor=maker, name="k", scopes=[scope]
    )
    Membership.objects.filter(user=maker).update(role=role)
    answer = _call(key, "keys/", "get")
    if scope not in CEILING[role]:
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "scope_beyond_role"
    elif scope != "keys:read":
        assert answer.json()["error"]["code"] == "missing_scope"  # the key itself is good
    else:
        assert answer.status_code == 200


@pytest.mark.parametrize(("route", "method"), [(c[0], c[1]) for c in _cases() if c[2] is None])
def test_methods_no_scope_covers_are_refused(catalog, organization, owner, route, method):
    """OPTIONS on an endpoint without a GET is refused even to a key with every scope (it
    would describe the endpoint's fields); HEAD there has nothing to answer: 405."""
    _record, every = api_keys.api_key_create(
        organization=organization, actor=owner, name="every", scopes=sorted(ALL)
    )
    before = _state()
    refused = _call(every, route, method)
    status, code = (405, "") if method == "head" else (403, "method_not_scoped")
    assert _refused(refused, method, status, code), (route, method, refused.content)
    assert _state() == before


def test_head_needs_the_read_scope(catalog, organization, owner):
    """A key that may only report usage cannot list reservations by asking with HEAD."""
    _record, usage_only = api_keys.api_key_create(
        organization=organization, actor=owner, name="usage", scopes=["usage:write"]
    )
    client = Client(HTTP_AUTHORIZATION=f"Bearer {usage_only}")
    assert client.head("/api/v1/reservations/").status_code == 403
    refused = client.options("/api/v1/reservations/")
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "type": "permission_denied",
        "code": "missing_scope",
        "message": "This key lacks the reservations:read scope.",
        "param": None,
    }


def test_a_method_no_view_has_is_still_405(catalog, organization, owner):
    _record, every = api_keys.api_key_create(
        organization=organization, actor=owner, name="every", scopes=sorted(ALL)
    )
    client = Client(HTTP_AUTHORIZATION=f"Bearer {every}")
    response = client.put("/api/v1/reservations/", "{}", content_type="application/json")
    assert response.status_code == 405
