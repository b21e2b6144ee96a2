"""Blocks start on whole hours in UTC, whatever offset the start is written with: 09:00+05:30
is 03:30 UTC and is refused, with the UTC time in the message, by the one check every way in
uses (the window, the portal's search and reserve forms, the API's search and create)."""

from datetime import UTC, datetime

import pytest
from django.urls import reverse

from accounts import api_keys
from accounts.models import ApiKey
from capacity.models import Reservation
from capacity.windows import window_for
from core.errors import ServiceError
from core.models import AuditEvent
from tests.conftest import client_for

from .test_views import BLOCK

OFF_HOUR = "2026-12-02T09:00:00+05:30"  # 03:30 UTC
OFF_HOUR_MESSAGE = "Blocks start on the hour in UTC: 09:00+05:30 is 03:30 UTC."
ON_HOUR = "2026-12-02T09:30:00+05:30"  # 04:00 UTC


@pytest.mark.parametrize(
    ("starts_at", "message"),
    [
        (OFF_HOUR, OFF_HOUR_MESSAGE),
        ("2026-12-02T09:00:00+05:45", "Blocks start on the hour in UTC: 09:00+05:45 is 03:15 UTC."),
        (
            "2026-12-02T09:00:30+05:30",
            "Blocks start on the hour in UTC: 09:00:30+05:30 is 03:30:30 UTC.",
        ),
        ("2026-12-02T09:30:00+00:00", "Blocks start on the hour (for example 09:00, not 09:30)."),
    ],
)
def test_a_start_off_the_utc_hour_is_refused_with_the_utc_time(starts_at, message):
    with pytest.raises(ServiceError) as refused:
        window_for(starts_at=datetime.fromisoformat(starts_at), duration_hours=4)
    assert (refused.value.code, refused.value.param, refused.value.message) == (
        "start_not_on_hour",
        "starts_at",
        message,
    )


def test_a_whole_utc_hour_written_with_an_offset_is_taken_in_utc():
    window = window_for(starts_at=datetime.fromisoformat(ON_HOUR), duration_hours=4)
    assert window.starts_at == datetime(2026, 12, 2, 4, tzinfo=UTC)
    assert window.starts_at.utcoffset().total_seconds() == 0
    assert window.ends_at == datetime(2026, 12, 2, 8, tzinfo=UTC)


def _state() -> tuple:
    return Reservation.objects.count(), AuditEvent.objects.count()


def test_the_portal_search_and_reserve_forms_refuse_it(catalog, organization, owner):
    client = client_for(owner)
    before = _state()
    search = client.get(
        reverse("capacity-search", args=[organization.slug]), {**BLOCK, "starts_at": OFF_HOUR}
    )
    assert search.status_code == 200
    assert search.context["form"].errors == {"starts_at": [OFF_HOUR_MESSAGE]}
    assert search.context["results"] is None
    reserve = client.post(
        reverse("reservation-new", args=[organization.slug]),
        {**BLOCK, "starts_at": OFF_HOUR, "request_token": "utc"},
    )
    assert reserve.status_code == 400
    assert reserve.context["form"].errors == {"starts_at": [OFF_HOUR_MESSAGE]}
    assert _state() == before


def test_the_api_search_and_create_refuse_it(catalog, organization, owner):
    _record, key = api_keys.api_key_create(
        organization=organization,
        actor=owner,
        name="utc",
        scopes=[ApiKey.Scope.RESERVATIONS_READ, ApiKey.Scope.RESERVATIONS_WRITE],
    )
    client = client_for(owner)
    client.logout()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    body = {**BLOCK, "starts_at": OFF_HOUR}
    before = _state()
    field = {"param": "starts_at", "code": "start_not_on_hour", "message": OFF_HOUR_MESSAGE}
    refused = {"type": "invalid_request", **field, "errors": [field]}
    search = client.get("/api/v1/offerings/", body, **headers)
    assert (search.status_code, search.json()["error"]) == (400, refused)
    create = client.post("/api/v1/reservations/", body, content_type="application/json", **headers)
    assert (create.status_code, create.json()["error"]) == (400, refused)
    assert _state() == before
    taken = client.post(
        "/api/v1/reservations/",
        {**BLOCK, "starts_at": ON_HOUR},
        content_type="application/json",
        **headers,
    )
    assert taken.status_code == 201, taken.content
    assert (taken.json()["starts_at"], taken.json()["ends_at"]) == (
        "2026-12-02T04:00:00Z",
        "2026-12-03T04:00:00Z",
    )
