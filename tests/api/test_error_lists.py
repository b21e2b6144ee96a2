"""A 400 names every invalid field at once: `error` is the first of them, as before, and
`error.errors` lists each as {param, code, message} in the order the fields are checked."""

import pytest

from capacity.models import Reservation
from tests.api.test_api import BLOCK, api, key_for

pytestmark = pytest.mark.django_db

REQUIRED = "This field is required."


def _errors(response) -> list[tuple[str | None, str, str]]:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    listed = [(e["param"], e["code"], e["message"]) for e in error["errors"]]
    assert listed[0] == (error["param"], error["code"], error["message"])
    assert error["type"] == "invalid_request"
    return listed


def test_a_search_missing_several_parameters_names_them_all(catalog, organization, owner):
    response = api(key_for(organization, owner)).get("/api/v1/offerings/", {"gpu_model": "h100"})
    assert _errors(response) == [
        ("node_count", "required", REQUIRED),
        ("duration_hours", "required", REQUIRED),
    ]


def test_an_unknown_gpu_model_names_the_valid_ones_beside_the_missing_fields(
    catalog, organization, owner
):
    response = api(key_for(organization, owner)).get(
        "/api/v1/offerings/", {"gpu_model": "h100-sxm"}
    )
    assert _errors(response) == [
        (
            "gpu_model",
            "invalid_choice",
            "Unknown GPU model 'h100-sxm'; choose one of: h100 (see /api/v1/gpu-models/).",
        ),
        ("node_count", "required", REQUIRED),
        ("duration_hours", "required", REQUIRED),
    ]


def test_every_field_wrong_is_listed_in_the_forms_order(catalog, organization, owner):
    query = {
        "duration_hours": "0",
        "starts_at": "2026-12-01T10:30:00Z",
        "node_count": "two",
        "region": "mars",
        "gpu_model": "a100",
    }
    client = api(key_for(organization, owner))
    first = _errors(client.get("/api/v1/offerings/", query))
    assert first == [
        (
            "gpu_model",
            "invalid_choice",
            "Unknown GPU model 'a100'; choose one of: h100 (see /api/v1/gpu-models/).",
        ),
        (
            "region",
            "invalid_choice",
            "Unknown region 'mars'; choose one of: us-east, us-west (see /api/v1/regions/).",
        ),
        ("node_count", "invalid", "Give the number of nodes as a whole number."),
        (
            "starts_at",
            "start_not_on_hour",
            "Blocks start on the hour (for example 09:00, not 09:30).",
        ),
        ("duration_hours", "duration_out_of_range", "Reserve between 1 and 4368 hours (182 days)."),
    ]
    # The same answer however the query is ordered.
    again = client.get("/api/v1/offerings/", dict(reversed(list(query.items()))))
    assert _errors(again) == first


def test_a_long_unknown_value_is_echoed_cut_short(catalog, organization, owner):
    response = api(key_for(organization, owner)).get(
        "/api/v1/offerings/", {**BLOCK, "region": "x" * 500}
    )
    assert _errors(response) == [
        (
            "region",
            "invalid_choice",
            f"Unknown region '{'x' * 40}'; choose one of: us-east, us-west (see /api/v1/regions/).",
        )
    ]


def test_a_reservation_with_two_bad_fields_names_both_and_makes_nothing(
    catalog, organization, owner
):
    body = {**BLOCK, "node_count": [2], "region": "eu-north", "client_token": "t" * 65}
    response = api(key_for(organization, owner)).post(
        "/api/v1/reservations/", body, content_type="application/json"
    )
    assert _errors(response) == [
        (
            "region",
            "invalid_choice",
            "Unknown region 'eu-north'; choose one of: us-east, us-west (see /api/v1/regions/).",
        ),
        ("node_count", "invalid", "Send one string or number here."),
        ("client_token", "max_length", "Ensure this field has no more than 64 characters."),
    ]
    assert Reservation.objects.count() == 0


def test_a_reservation_without_a_region_says_so_beside_the_other_fields(
    catalog, organization, owner
):
    body = {k: v for k, v in BLOCK.items() if k != "region"} | {"duration_hours": "a day"}
    response = api(key_for(organization, owner)).post(
        "/api/v1/reservations/", body, content_type="application/json"
    )
    assert _errors(response) == [
        ("region", "required", "Choose a region."),
        ("duration_hours", "invalid", "Give the duration in whole hours."),
    ]
    assert Reservation.objects.count() == 0


def test_a_single_invalid_field_is_a_list_of_one(catalog, organization, owner):
    response = api(key_for(organization, owner)).get("/api/v1/reservations/", {"state": "gone"})
    message = (
        "Unknown state; choose one of: held, scheduled, provisioning, active, releasing, "
        "completed, expired, canceled, failed."
    )
    assert response.json()["error"] == {
        "type": "invalid_request",
        "code": "invalid",
        "message": message,
        "param": "state",
        "errors": [{"param": "state", "code": "invalid", "message": message}],
    }


def test_a_body_that_is_not_json_is_a_400_naming_no_field(catalog, organization, owner):
    response = api(key_for(organization, owner)).post(
        "/api/v1/reservations/", "{not json", content_type="application/json"
    )
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (400, "parse_error", None)
    assert error["errors"] == [{"param": None, "code": "parse_error", "message": error["message"]}]


def test_errors_other_than_400_carry_no_list(catalog, organization, owner):
    response = api(key_for(organization, owner)).get("/api/v1/reservations/rsv_missing/")
    assert response.status_code == 404
    assert "errors" not in response.json()["error"]
