from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import yaml
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts import api_keys
from accounts.api_keys.format import generate, parse
from accounts.models import ApiKey
from accounts.permissions import Role
from billing.models import Payment, SlaCredit
from capacity import lifecycle
from capacity.models import Reservation
from tests.capacity.conftest import NEXT_HOUR
from tests.capacity.test_reservations import reserve, scheduled
from tests.conftest import member_of
from tests.factories import OrganizationFactory

ALL = [s.value for s in ApiKey.Scope]
BLOCK = {
    "gpu_model": "h100",
    "region": "us-east",
    "node_count": 2,
    "duration_hours": 24,
    "starts_at": "2026-12-01T10:00:00Z",
}


def key_for(org, user, scopes=ALL):
    return api_keys.api_key_create(organization=org, actor=user, name="ci", scopes=scopes)[1]


def api(key=None, **headers):
    client = Client()
    if key:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    client.defaults.update(headers)
    return client


def gateway_key():
    """The model gateway's key: a platform organization's, with usage:write."""
    platform = OrganizationFactory(name="Hyperblock Gateway", slug="gateway", is_platform=True)
    operator = member_of(platform, Role.OWNER)
    return key_for(platform, operator, scopes=["usage:write"])


def error(response):
    return response.status_code, response.json()["error"]["code"]


def checksum_off(key: str) -> str:
    """The key with the last character of its checksum changed (never to itself)."""
    return key[:-1] + ("y" if key.endswith("x") else "x")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "not_authenticated"),
        ("Basic abc", "malformed_header"),
        ("Bearer hbk_short", "malformed_key"),
        ("Bearer " + checksum_off(generate()[0]), "malformed_key"),
        ("Bearer " + generate()[0], "unknown_key"),  # well formed, never issued
    ],
)
def test_bad_credentials_are_401_in_one_shape(db, header, code):
    client = Client(HTTP_AUTHORIZATION=header) if header else Client()
    response = client.get("/api/v1/reservations/")
    assert error(response) == (401, code)
    assert set(response.json()["error"]) == {"type", "code", "message", "param"}
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_revoked_and_expired_keys_stop_working(catalog, organization, owner, frozen_clock):
    key = key_for(organization, owner)
    assert api(key).get("/api/v1/reservations/").status_code == 200
    record = ApiKey.objects.get()
    api_keys.api_key_revoke(api_key=record, actor=owner)
    # Another process's cached copy may still pass for up to 5 seconds, never longer.
    frozen_clock.shift(timedelta(seconds=6))
    assert error(api(key).get("/api/v1/reservations/")) == (401, "revoked_key")
    _expiring, raw = api_keys.api_key_create(
        organization=organization,
        actor=owner,
        name="short",
        scopes=ALL,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    frozen_clock.shift(timedelta(hours=2))
    assert error(api(raw).get("/api/v1/reservations/")) == (401, "expired_key")


def test_revoking_clears_this_process_cache_at_once(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    key = key_for(organization, owner)
    assert api(key).get("/api/v1/reservations/").status_code == 200  # now cached
    with django_capture_on_commit_callbacks(execute=True):
        api_keys.api_key_revoke(api_key=ApiKey.objects.get(), actor=owner)
    assert error(api(key).get("/api/v1/reservations/")) == (401, "revoked_key")


def test_rotation_keeps_the_old_key_for_the_grace_period(
    catalog, organization, owner, frozen_clock
):
    old = key_for(organization, owner)
    _new_record, new = api_keys.api_key_rotate(
        api_key=ApiKey.objects.get(), actor=owner, grace=timedelta(hours=1)
    )
    assert api(old).get("/api/v1/reservations/").status_code == 200
    assert api(new).get("/api/v1/reservations/").status_code == 200
    frozen_clock.shift(timedelta(hours=1, seconds=6))  # past the grace and the 5 s cache
    assert error(api(old).get("/api/v1/reservations/")) == (401, "revoked_key")
    assert api(new).get("/api/v1/reservations/").status_code == 200


def test_a_missing_scope_is_403(catalog, organization, owner):
    key = key_for(organization, owner, scopes=["billing:read"])
    assert error(api(key).get("/api/v1/reservations/")) == (403, "missing_scope")
    assert error(
        api(key).post("/api/v1/reservations/", BLOCK, content_type="application/json")
    ) == (
        403,
        "missing_scope",
    )
    assert Reservation.objects.count() == 0


def test_reserve_list_retrieve_and_cancel_by_api(catalog, organization, owner):
    client = api(key_for(organization, owner))
    created = client.post(
        "/api/v1/reservations/", {**BLOCK, "client_token": "t1"}, content_type="application/json"
    )
    assert created.status_code == 201
    body = created.json()
    assert {
        k: body[k] for k in ("state", "gpu_model", "region", "node_count", "price", "currency")
    } == {
        "state": "held",
        "gpu_model": "h100",
        "region": "us-east",
        "node_count": 2,
        "price": "768.00",
        "currency": "usd",
    }
    assert (body["starts_at"], body["ends_at"]) == ("2026-12-01T10:00:00Z", "2026-12-02T10:00:00Z")
    again = client.post(
        "/api/v1/reservations/", {**BLOCK, "client_token": "t1"}, content_type="application/json"
    )
    assert again.json()["id"] == body["id"]  # the same client token: the same reservation
    listed = client.get("/api/v1/reservations/", {"state": "held"}).json()
    assert [r["id"] for r in listed["results"]] == [body["id"]]
    assert client.get(f"/api/v1/reservations/{body['id']}/").json()["id"] == body["id"]
    canceled = client.post(
        f"/api/v1/reservations/{body['id']}/cancel/", {}, content_type="application/json"
    )
    assert canceled.json()["state"] == "canceled"


def test_the_list_pages_by_cursor_filters_and_matches_each_reservations_own_document(
    catalog, organization, owner, frozen_clock
):
    made = []
    for n in range(3):
        made.append(
            reserve(
                organization,
                owner,
                catalog,
                nodes=1,
                start=NEXT_HOUR + timedelta(hours=n),
                length=1,
            )
        )
        frozen_clock.shift(timedelta(seconds=1))
    client = api(key_for(organization, owner))
    first = client.get("/api/v1/reservations/", {"limit": 2}).json()
    second = client.get(first["next"]).json()
    listed = first["results"] + second["results"]
    assert [r["id"] for r in listed] == [r.public_id for r in reversed(made)]  # newest first
    assert second["next"] is None
    for document in listed:
        # The one document has the list's fields, the extension waiting for payment, what
        # canceling would refund now (a hold: nothing was paid) and the SLA credits.
        detail = client.get(f"/api/v1/reservations/{document['id']}/").json()
        nothing = {"amount": "0.00", "percent": 0, "currency": "usd"}
        assert detail == {
            **document,
            "pending_extension": None,
            "cancellation_refund": nothing,
            "sla_credits": [],
        }
    assert listed[-1]["duration_hours"] == 1
    later = client.get(
        "/api/v1/reservations/", {"starts_after": (NEXT_HOUR + timedelta(hours=1)).isoformat()}
    ).json()
    assert [r["id"] for r in later["results"]] == [made[2].public_id, made[1].public_id]


def test_the_detail_carries_the_refund_a_cancellation_gives_now(catalog, organization, owner):
    reservation = scheduled(organization, owner, catalog)  # 768.00, starts in half an hour
    Payment.objects.filter(reservation=reservation).update(amount_refunded=Decimal("100.01"))
    client = api(key_for(organization, owner))
    url = f"/api/v1/reservations/{reservation.public_id}/"
    quoted = client.get(url).json()["cancellation_refund"]
    # Half of what was paid less the refund already made (667.99), to the cent.
    assert quoted == {"amount": "334.00", "percent": 50, "currency": "usd"}
    canceled = client.post(f"{url}cancel/", {}, content_type="application/json").json()
    assert canceled["refund_due"] == quoted["amount"]
    assert client.get(url).json()["cancellation_refund"] is None


def test_the_detail_shows_the_sla_credits_the_list_does_not(catalog, organization, owner):
    reservation = scheduled(organization, owner, catalog)  # 768.00
    granted_at = timezone.now().replace(microsecond=0)
    made = [
        SlaCredit.objects.create(
            organization=organization,
            reservation=reservation,
            cause=cause,
            key=key,
            minutes=61,
            node_hours=Decimal("4.0000"),
            percent=Decimal("50"),
            computed=amount,
            amount=amount,
            currency="usd",
            method="refund",
            status=status,
            granted_at=when,
        )
        for cause, key, amount, status, when in [
            ("late_start", "start", Decimal("32.00"), "granted", granted_at),
            ("degraded", "incident:7", Decimal("5.33"), "pending", None),
        ]
    ]
    client = api(key_for(organization, owner))
    document = client.get(f"/api/v1/reservations/{reservation.public_id}/").json()
    stamp = granted_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert document["sla_credits"] == [
        {"id": made[0].public_id, "cause": "late_start", "amount": "32.00", "currency": "usd",
         "status": "granted", "granted_at": stamp},
        {"id": made[1].public_id, "cause": "degraded", "amount": "5.33", "currency": "usd",
         "status": "pending", "granted_at": None},
    ]  # fmt: skip
    [listed] = client.get("/api/v1/reservations/").json()["results"]
    assert "sla_credits" not in listed


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"gpu_model": "h900"}, "gpu_model", "invalid_choice"),
        ({"starts_at": "2026-12-01T10:30:00Z"}, "starts_at", None),
        ({"node_count": 0}, "node_count", None),
        ({"duration_hours": "x"}, "duration_hours", "invalid"),
    ],
)
def test_bad_reservations_are_400_with_the_field(
    catalog, organization, owner, changes, param, code
):
    response = api(key_for(organization, owner)).post(
        "/api/v1/reservations/", {**BLOCK, **changes}, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    if code:
        assert response.json()["error"]["code"] == code
    assert Reservation.objects.count() == 0


def test_sold_out_is_409(catalog, organization, owner):
    client = api(key_for(organization, owner))
    for nodes in (8, 4):
        client.post(
            "/api/v1/reservations/", {**BLOCK, "node_count": nodes}, content_type="application/json"
        )
    response = client.post("/api/v1/reservations/", BLOCK, content_type="application/json")
    assert error(response) == (409, "capacity_unavailable")


@pytest.mark.parametrize(
    "method_path",
    [
        ("get", "/api/v1/reservations/{id}/"),
        ("post", "/api/v1/reservations/{id}/cancel/"),
        ("post", "/api/v1/reservations/{id}/extend/"),
        ("post", "/api/v1/reservations/{id}/pay/"),
    ],
)
def test_another_organizations_reservation_is_404_and_untouched(
    catalog, organization, owner, other_organization, method_path
):
    theirs = reserve(other_organization, other_organization.memberships.get().user, catalog)
    theirs = lifecycle.reservation_transition(
        reservation=theirs, to=Reservation.State.SCHEDULED, actor=None
    )
    method, path = method_path
    client = api(key_for(organization, owner))
    body = {"hours": 1, "client_token": "x"}
    response = getattr(client, method)(
        path.format(id=theirs.public_id), body, content_type="application/json"
    )
    assert error(response) == (404, "not_found")
    theirs.refresh_from_db()
    assert (theirs.state, theirs.ends_at) == ("scheduled", NEXT_HOUR + timedelta(hours=24))
    listed = client.get("/api/v1/reservations/").json()["results"]
    assert theirs.public_id not in [r["id"] for r in listed]


def test_offerings_search(catalog, organization, owner):
    response = api(key_for(organization, owner)).get("/api/v1/offerings/", {**BLOCK, "region": ""})
    assert [(o["kind"], o["region"], o["price"]) for o in response.json()] == [
        ("exact", "us-west", "576.00"),
        ("exact", "us-east", "768.00"),
    ]


def test_session_users_name_their_organization(catalog, organization, owner):
    client = Client()
    client.force_login(owner)
    assert error(client.get("/api/v1/reservations/")) == (404, "not_found")
    assert client.get("/api/v1/reservations/", {"org": organization.slug}).status_code == 200


def test_key_verification_for_the_model_gateway(catalog, organization, owner):
    gateway = gateway_key()
    customer = key_for(organization, member_of(organization, Role.MEMBER), scopes=["inference"])
    answer = api(gateway).post(
        "/api/v1/keys/verify/", {"key": customer}, content_type="application/json"
    )
    assert answer.json() == {
        "valid": True,
        "organization": organization.slug,
        "scopes": ["inference"],
        "inference_allowed": True,
        "reason": None,
    }
    bogus = api(gateway).post(
        "/api/v1/keys/verify/", {"key": "hbk_nope"}, content_type="application/json"
    )
    assert bogus.json()["reason"] == "malformed_key"


def test_last_use_is_written_at_most_once_a_minute(catalog, organization, owner, frozen_clock):
    key = key_for(organization, owner)
    api(key).get("/api/v1/reservations/")
    first = ApiKey.objects.get().last_used_at
    frozen_clock.shift(timedelta(seconds=30))
    api(key).get("/api/v1/reservations/")
    assert ApiKey.objects.get().last_used_at == first
    frozen_clock.shift(timedelta(seconds=31))
    api(key).get("/api/v1/reservations/")
    assert ApiKey.objects.get().last_used_at == first + timedelta(seconds=61)


def test_schema_and_docs_are_served(db):
    schema = Client().get("/api/v1/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/reservations/{public_id}/pay/" in schema.content
    detail = yaml.safe_load(schema.content)["components"]["schemas"]["ReservationDetail"]
    refund = detail["properties"]["cancellation_refund"]
    assert (refund["allOf"], refund["nullable"]) == (
        [{"$ref": "#/components/schemas/CancellationRefund"}],
        True,
    )
    components = yaml.safe_load(schema.content)["components"]["schemas"]
    assert detail["properties"]["sla_credits"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/SlaCredit"},
    }
    credit = components["SlaCredit"]
    assert sorted(credit["properties"]) == [
        "amount", "cause", "currency", "granted_at", "id", "status",
    ]  # fmt: skip
    assert credit["properties"]["cause"]["allOf"] == [
        {"$ref": "#/components/schemas/SlaCreditCauseEnum"}
    ]
    assert components["SlaCreditCauseEnum"]["enum"] == ["degraded", "late_start", "force_released"]
    assert components["SlaCreditStatusEnum"]["enum"] == ["pending", "granted", "failed"]
    assert "sla_credits" not in components["Reservation"]["properties"]
    docs = Client().get("/api/v1/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content


def test_operators_create_keys_from_the_command_line(organization):
    out, err = StringIO(), StringIO()
    call_command(
        "create_api_key",
        "--org",
        organization.slug,
        "--name",
        "ops",
        "--scope",
        "reservations:read",
        stdout=out,
        stderr=err,
    )
    key = out.getvalue().strip()
    assert parse(key) == ApiKey.objects.get().public_id
    assert api(key).get("/api/v1/reservations/").status_code == 200
    assert "It is shown once" in err.getvalue()


def test_idempotency_key_replays_the_first_answer(catalog, organization, owner):
    client = api(key_for(organization, owner))
    first = client.post(
        "/api/v1/reservations/", BLOCK, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    again = client.post(
        "/api/v1/reservations/", BLOCK, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Reservation.objects.count() == 1
    other = client.post(
        "/api/v1/reservations/",
        {**BLOCK, "node_count": 1},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    assert error(other) == (409, "idempotency_key_reused")
    assert Reservation.objects.count() == 1


def test_an_idempotency_key_in_flight_is_409(catalog, organization, owner):
    from core.models import IdempotencyRecord

    client = api(key_for(organization, owner))
    record_owner = f"key:{ApiKey.objects.get().pk}"
    import hashlib

    body = b'{"gpu_model": "h100"}'
    fingerprint = hashlib.sha256(b"POST /api/v1/reservations/ " + body).hexdigest()
    IdempotencyRecord.objects.create(owner=record_owner, key="busy", request_hash=fingerprint)
    response = client.post(
        "/api/v1/reservations/", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="busy"
    )
    assert error(response) == (409, "idempotency_key_in_use")


def test_an_idempotency_key_let_go_between_the_clash_and_the_read_is_409_not_500(
    catalog, organization, owner, monkeypatch
):
    """The key's holder failed and deleted its record just after our insert clashed with it."""
    from core import api as core_api
    from core.models import IdempotencyRecord

    client = api(key_for(organization, owner))
    record_owner = f"key:{ApiKey.objects.get().pk}"
    IdempotencyRecord.objects.create(owner=record_owner, key="gone", request_hash="x")
    filtered = IdempotencyRecord.objects.filter

    def gone_by_the_read(*args, **kwargs):
        IdempotencyRecord.objects.all().delete()
        return filtered(*args, **kwargs)

    created = IdempotencyRecord.objects.create

    def clash_then_vanish(**kwargs):
        monkeypatch.setattr(IdempotencyRecord.objects, "filter", gone_by_the_read)
        return created(**kwargs)

    monkeypatch.setattr(core_api.IdempotencyRecord.objects, "create", clash_then_vanish)
    response = client.post(
        "/api/v1/reservations/", b"{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY="gone"
    )
    assert error(response) == (409, "idempotency_key_in_use")


def test_an_idempotency_key_expires_after_a_day(catalog, organization, owner, frozen_clock):
    client = api(key_for(organization, owner))
    client.post(
        "/api/v1/reservations/",
        {**BLOCK, "node_count": 1},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="d",
    )
    frozen_clock.shift(timedelta(hours=24, seconds=1))
    later = {**BLOCK, "node_count": 1, "starts_at": "2026-12-03T10:00:00Z"}
    again = client.post(
        "/api/v1/reservations/", later, content_type="application/json", HTTP_IDEMPOTENCY_KEY="d"
    )
    assert again.status_code == 201
    assert Reservation.objects.count() == 2


def test_the_rate_limit_answers_429_with_retry_after(
    catalog, organization, owner, settings, frozen_clock
):
    settings.API_RATE_LIMIT = 3
    client = api(key_for(organization, owner))
    frozen_clock.shift(timedelta(seconds=40))  # 20 seconds before the minute's window ends
    answers = [client.get("/api/v1/reservations/") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a["X-RateLimit-Remaining"] for a in answers[:3]] == ["2", "1", "0"]
    assert error(answers[3]) == (429, "throttled")
    assert int(answers[3]["Retry-After"]) == 20
    # Another key has its own bucket.
    assert api(key_for(organization, owner)).get("/api/v1/reservations/").status_code == 200


def test_inference_stops_when_the_unpaid_balance_passes_the_credit_limit(
    catalog, organization, owner
):
    from billing.models import LedgerEntry

    gateway = gateway_key()
    customer = key_for(organization, owner, scopes=["inference"])

    def ask():
        return api(gateway).post(
            "/api/v1/keys/verify/", {"key": customer}, content_type="application/json"
        )

    assert ask().json()["inference_allowed"] is True
    LedgerEntry.objects.create(
        organization=organization, kind="usage", amount="0.01", currency="usd", description="x"
    )
    assert (ask().json()["inference_allowed"], ask().json()["reason"]) == (
        False,
        "over_credit_limit",
    )


def test_keys_are_listed_without_secrets_and_revoked_by_api(
    catalog, organization, owner, other_organization
):
    raw = key_for(organization, owner)
    client = api(raw)
    listed = client.get("/api/v1/keys/").json()["results"]
    assert [k["name"] for k in listed] == ["ci"]
    assert raw not in str(listed)
    theirs = api_keys.api_key_create(
        organization=other_organization,
        actor=other_organization.memberships.get().user,
        name="t",
        scopes=ALL,
    )[0]
    assert error(client.post(f"/api/v1/keys/{theirs.public_id}/revoke/")) == (404, "not_found")
    second = api_keys.api_key_create(
        organization=organization, actor=owner, name="second", scopes=ALL
    )[0]
    assert client.post(f"/api/v1/keys/{second.public_id}/revoke/").json()["revoked_at"] is not None
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


@pytest.mark.parametrize("value", [[None, None], False, {"a": 1}, 0])
def test_a_list_where_one_value_belongs_is_a_clear_400(catalog, organization, owner, value):
    response = api(key_for(organization, owner)).post(
        "/api/v1/reservations/",
        {**BLOCK, "starts_at": value},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "starts_at"
    assert Reservation.objects.count() == 0


def test_a_null_start_means_now(catalog, organization, owner):
    response = api(key_for(organization, owner)).post(
        "/api/v1/reservations/", {**BLOCK, "starts_at": None}, content_type="application/json"
    )
    assert (response.status_code, response.json()["starts_on_payment"]) == (201, True)
