"""Every API route and method names the scope it needs, a key without that scope (but with
every other) gets 403 missing_scope and changes nothing, and a key with only that scope gets
past the check. A new endpoint without `required_scopes` fails this test."""

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


def _cases() -> list[tuple[str, str, str]]:
    cases = []
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
    return cases


def _call(key: str, route: str, method: str):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    path = "/api/v1/" + route.replace("<str:public_id>", "rsv_doesnotexist0")
    if method == "get":
        return client.get(path)
    return getattr(client, method)(path, json.dumps({}), content_type="application/json")


@pytest.mark.parametrize(("route", "method", "needed"), _cases())
def test_each_endpoint_needs_its_scope(catalog, organization, owner, route, method, needed):
    _record, without = api_keys.api_key_create(
        organization=organization, actor=owner, name="without", scopes=sorted(ALL - {needed})
    )
    _record, only = api_keys.api_key_create(
        organization=organization, actor=owner, name="only", scopes=[needed]
    )
    before = _state()
    refused = _call(without, route, method)
    assert refused.status_code == 403, (route, method, refused.content)
    assert refused.json()["error"]["code"] == "missing_scope"
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
