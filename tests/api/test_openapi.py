"""The OpenAPI schema tells the truth: every operation is described and lists the errors it
gives in the one error shape, enumerations are enums, bounds are the ones the API enforces,
and links carry ids between operations."""

import jsonschema
import pytest
import yaml
from django.test import Client

from capacity.models import Reservation
from core.api import ApiView, Cursor
from core.openapi import ALWAYS, ERROR_TYPES
from tests.api.test_api import api, key_for

pytestmark = pytest.mark.django_db

ERROR_REF = "#/components/schemas/Error"
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    with django_db_blocker.unblock():  # served as clients get it; generated once
        response = Client().get("/api/v1/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def operations(schema):
    return [
        (f"{method.upper()} {path}", op)
        for path, methods in schema["paths"].items()
        for method, op in methods.items()
        if method in METHODS
    ]


def by_id(schema):
    return {op["operationId"]: op for _, op in operations(schema)}


def test_every_operation_has_its_own_summary_and_description(schema):
    ops = operations(schema)
    assert len(ops) >= 16
    summaries = [op.get("summary", "") for _, op in ops]
    descriptions = [op.get("description", "").strip() for _, op in ops]
    assert all(summaries), [name for name, op in ops if not op.get("summary")]
    assert all(descriptions), [name for name, op in ops if not op.get("description")]
    assert len(set(summaries)) == len(summaries)
    assert len(set(descriptions)) == len(descriptions)
    generic = (ApiView.__doc__ or "").split("\n")[0]
    assert generic
    assert not [d for d in descriptions if generic in d]


def test_every_operation_documents_its_errors_in_the_shared_shape(schema):
    for name, op in operations(schema):
        responses = op["responses"]
        assert "default" not in responses, name
        statuses = {int(status) for status in responses}
        assert set(ALWAYS) <= statuses, name
        assert any(200 <= status < 300 for status in statuses), name
        for status, answer in responses.items():
            if int(status) >= 400:
                body = answer["content"]["application/json"]["schema"]
                assert body == {"$ref": ERROR_REF}, (name, status)
                assert answer["description"], (name, status)
        assert "Retry-After" in responses["429"]["headers"], name
        if name.startswith("POST "):
            assert {400, 409} <= statuses, name
            assert "Idempotency-Key" in [p["name"] for p in op.get("parameters", [])], name
        takes_id = "{public_id}" in name
        query = [p for p in op.get("parameters", []) if p["in"] != "path"]
        takes_input = bool(query) or "requestBody" in op
        if takes_input:
            assert 400 in statuses, name
        if takes_id:
            assert "No " in responses["404"]["description"], name  # its own sentence


def test_the_schema_names_no_default_response_anywhere(schema):
    def walk(node):
        if isinstance(node, dict):
            assert "default" not in node.get("responses", {})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)


def test_the_error_component_is_the_handlers_shape(schema):
    components = schema["components"]["schemas"]
    detail = components["ErrorDetail"]
    assert components["Error"]["required"] == ["error"]
    assert set(detail["properties"]) == {"type", "code", "message", "param", "errors"}
    assert sorted(detail["required"]) == ["code", "message", "param", "type"]  # errors optional
    assert detail["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert set(components["FieldError"]["properties"]) == {"param", "code", "message"}
    assert components["ErrorTypeEnum"]["enum"] == ERROR_TYPES


def _json_schema(node):
    """OpenAPI 3.0's `nullable` as JSON Schema says it."""
    if isinstance(node, list):
        return [_json_schema(value) for value in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in node:
        converted["type"] = [node["type"], "null"]
    return converted


def _validator(schema):
    return jsonschema.Draft4Validator({**_json_schema(schema), "$ref": ERROR_REF})


def test_real_error_answers_validate_against_the_component(schema, organization, owner):
    key = key_for(organization, owner)
    answers = [
        Client().get("/api/v1/reservations/"),  # 401
        api("hbk_not_a_key").get("/api/v1/reservations/"),  # 401
        api(key).get("/api/v1/reservations/?limit=null"),  # 400
        api(key).get("/api/v1/reservations/rsv_missing/"),  # 404
        api(key).post("/api/v1/reservations/", {}, content_type="application/json"),  # 400
        api(key).get("/api/v1/offerings/?gpu_model=nope&node_count=1&duration_hours=1"),
    ]
    validator = _validator(schema)
    for response in answers:
        assert response.status_code >= 400
        validator.validate(response.json())
        assert response.json()["error"]["type"] in ERROR_TYPES


def test_reservation_state_is_an_enum_of_the_models_states(schema):
    states = set(Reservation.State.values)
    components = schema["components"]["schemas"]
    assert set(components["ReservationStateEnum"]["enum"]) == states
    state = components["Reservation"]["properties"]["state"]
    assert state == {"$ref": "#/components/schemas/ReservationStateEnum"} or state["allOf"] == [
        {"$ref": "#/components/schemas/ReservationStateEnum"}
    ]
    [parameter] = [
        p for p in by_id(schema)["reservations_list"]["parameters"] if p["name"] == "state"
    ]
    assert set(parameter["schema"]["enum"]) == states


def test_catalog_values_point_at_the_catalog_endpoints(schema):
    ops = by_id(schema)
    params = {p["name"]: p for p in ops["reservations_create"].get("parameters", [])}
    body = schema["components"]["schemas"]["CreateReservation"]["properties"]
    search = {p["name"]: p for p in ops["offerings_list"]["parameters"]}
    for field, endpoint in (("gpu_model", "/api/v1/gpu-models/"), ("region", "/api/v1/regions/")):
        assert endpoint in body[field]["description"]
        assert endpoint in search[field]["description"]
        assert "enum" not in search[field]["schema"]  # catalog data, not a fixed list
    assert "Idempotency-Key" in params


def _parameter(op, name):
    [parameter] = [p for p in op["parameters"] if p["name"] == name]
    return parameter["schema"]


def test_limit_bounds_in_the_schema_are_the_paginations(schema):
    paged = {
        op_id: op
        for op_id, op in by_id(schema).items()
        if "limit" in [p["name"] for p in op.get("parameters", [])]
    }
    assert {"reservations_list", "payments_list", "refunds_list", "invoices_list"} <= set(paged)
    assert "keys_list" in paged
    lists = paged.values()
    for op in lists:
        assert _parameter(op, "limit") == {
            "type": "integer",
            "minimum": 1,
            "maximum": Cursor.max_page_size,
            "default": Cursor.page_size,
        }


@pytest.mark.parametrize("value", ["null", "", "0", "101", "abc", "1.5", "-1", "٣"])
def test_a_limit_outside_the_schema_is_refused(organization, owner, value):
    response = api(key_for(organization, owner)).get(f"/api/v1/reservations/?limit={value}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit"


@pytest.mark.parametrize("value", ["1", "100"])
def test_a_limit_inside_the_schema_is_taken(organization, owner, value):
    response = api(key_for(organization, owner)).get(f"/api/v1/payments/?limit={value}")
    assert response.status_code == 200


def test_a_cursor_not_from_a_link_is_a_400(organization, owner):
    response = api(key_for(organization, owner)).get("/api/v1/reservations/?cursor=bogus")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "cursor"


def test_days_bounds_in_the_schema_are_the_views(schema, organization, owner):
    bounds = _parameter(by_id(schema)["usage_retrieve"], "days")
    assert (bounds["minimum"], bounds["maximum"], bounds["default"]) == (1, 90, 30)
    client = api(key_for(organization, owner))
    for value in (bounds["minimum"], bounds["maximum"]):
        assert client.get(f"/api/v1/usage/?days={value}").status_code == 200
    for value in (bounds["minimum"] - 1, bounds["maximum"] + 1, "null", "٣"):
        response = client.get(f"/api/v1/usage/?days={value}")
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "days"


def test_links_lead_from_a_new_reservation_to_what_can_be_done_with_it(schema):
    ops = by_id(schema)
    links = ops["reservations_create"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} == {
        "reservations_retrieve",
        "reservations_pay_create",
        "reservations_extend_retrieve",
        "reservations_extend_create",
        "reservations_cancel_create",
    }
    for _, op in operations(schema):
        for answer in op["responses"].values():
            for link in answer.get("links", {}).values():
                target = ops[link["operationId"]]
                names = {f"{p['in']}.{p['name']}" for p in target.get("parameters", [])}
                assert set(link.get("parameters", {})) <= names, link
                if "requestBody" in link:
                    ref = target["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    fields = schema["components"]["schemas"][ref.split("/")[-1]]["properties"]
                    assert set(link["requestBody"]) <= set(fields)
    assert "x-links" not in str(schema)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("state=", "state"),
        ("starts_before=", "starts_before"),
        ("starts_after=soon", "starts_after"),
    ],
)
def test_a_filter_the_schema_refuses_is_refused(organization, owner, query, param):
    response = api(key_for(organization, owner)).get(f"/api/v1/reservations/?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
