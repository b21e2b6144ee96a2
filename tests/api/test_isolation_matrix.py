"""Every API route that takes an id, with every method it answers, called by another
organization's key with this organization's ids: 404 each time, and nothing changes. A new
route with an id fails this test until it is added to OBJECTS."""

import json

import pytest
from django.test import Client
from django.urls import URLPattern

from accounts import api_keys
from accounts.models import ApiKey
from billing.models import LedgerEntry, Payment
from capacity import lifecycle
from capacity.models import Allocation, Reservation
from core.models import AuditEvent
from portal import api_urls
from tests.capacity.test_reservations import reserve

ALL = [s.value for s in ApiKey.Scope]
# Which object's id each kind of route takes.
OBJECTS = {"reservations/": "reservation", "keys/": "key"}


def _state() -> tuple:
    return (
        list(
            Reservation.objects.order_by("pk").values_list("pk", "state", "ends_at", "refund_due")
        ),
        list(Allocation.objects.order_by("pk").values_list("pk", "released_at", "ends_at")),
        list(ApiKey.objects.order_by("pk").values_list("pk", "revoked_at")),
        Payment.objects.count(),
        LedgerEntry.objects.count(),
        AuditEvent.objects.count(),
    )


def _routes() -> list[tuple[str, str, str]]:
    cases = []
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        route = str(pattern.pattern)
        if "<str:public_id>" not in route:
            continue
        kind = next((k for prefix, k in OBJECTS.items() if route.startswith(prefix)), None)
        assert kind is not None, f"add {route} to OBJECTS"
        view = pattern.callback.view_class
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view, method):
                cases.append((route, kind, method))
    return cases


@pytest.mark.parametrize(("route", "kind", "method"), _routes())
def test_another_organization_gets_404_and_changes_nothing(
    catalog, organization, owner, other_organization, route, kind, method
):
    mine = reserve(organization, owner, catalog)
    mine = lifecycle.reservation_transition(
        reservation=mine, to=Reservation.State.SCHEDULED, actor=None
    )
    my_key, _ = api_keys.api_key_create(
        organization=organization, actor=owner, name="mine", scopes=ALL
    )
    stranger = other_organization.memberships.get().user
    _their_key, raw = api_keys.api_key_create(
        organization=other_organization, actor=stranger, name="x", scopes=ALL
    )
    target = mine.public_id if kind == "reservation" else my_key.public_id
    before = _state()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    path = "/api/v1/" + route.replace("<str:public_id>", target)
    if method == "get":
        response = client.get(path)
    else:
        body = json.dumps({"hours": 1, "client_token": "x", "reason": "x"})
        response = getattr(client, method)(path, body, content_type="application/json")
    assert response.status_code == 404, (path, method, response.content)
    assert response.json()["error"]["type"] == "not_found"
    assert _state() == before
