"""Token usage. Stripe's Billing Meters are not in localstripe: the meter-event call is
answered by a fake at the HTTP boundary (the `responses` library), shaped like Stripe's API."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import responses
import time_machine
from django.core.cache import cache
from django.test import Client

from accounts import api_keys
from accounts.models import Organization
from billing.models import LedgerEntry, ModelPrice, UsageEvent, UsageHour
from billing.services import accounts, usage

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clock():
    with time_machine.travel(NOON + timedelta(minutes=30), tick=False):
        yield


@pytest.fixture
def prices(db):
    ModelPrice.objects.create(
        model="llama-70b", input_per_million=Decimal("0.60"), output_per_million=Decimal("2.40")
    )


def key(org, user, scopes):
    return api_keys.api_key_create(organization=org, actor=user, name="k", scopes=scopes)


def event(n, minute=5, **extra):
    return {
        "id": f"ev-{n}",
        "model": "llama-70b",
        "input_tokens": 1000,
        "output_tokens": 500,
        "time": (NOON + timedelta(minutes=minute) - timedelta(hours=1)).isoformat(),
        **extra,
    }


def post(raw, events):
    return Client(HTTP_AUTHORIZATION=f"Bearer {raw}").post(
        "/api/v1/usage/", json.dumps({"events": events}), content_type="application/json"
    )


def test_a_batch_keeps_the_good_events_and_reports_the_bad_ones(organization, owner, prices):
    _record, raw = key(organization, owner, ["usage:write"])
    batch = [
        event(1),
        event(2),
        event(1),
        event(4, model="gpt-9"),
        event(3, minute=-60 * 24 * 8),  # older than USAGE_MAX_AGE
        event(5, minute=100),  # 10 minutes ahead: more than the 5 allowed
    ]
    answer = post(raw, batch)
    assert answer.status_code == 207
    outside = {"code": "time_out_of_window", "message": "time is outside the accepted window"}
    assert answer.json() == {
        "accepted": 2,
        "duplicates": 1,
        "errors": [
            {
                "index": 3,
                "param": "events[3].model",
                "code": "unknown_model",
                "message": "unknown model 'gpt-9'; priced models: llama-70b",
            },
            {"index": 4, "param": "events[4].time", **outside},
            {"index": 5, "param": "events[5].time", **outside},
        ],
    }
    again = post(raw, [event(1), event(2)])
    assert again.json() == {"accepted": 0, "duplicates": 2, "errors": []}
    assert UsageEvent.objects.count() == 2


def test_batches_are_limited_and_need_the_scope(organization, owner, prices):
    _r, raw = key(organization, owner, ["usage:write"])
    too_many = post(raw, [event(n) for n in range(1001)])
    assert too_many.status_code == 400
    assert too_many.json()["error"]["message"] == "send a list of 1 to 1000 events"
    _r2, reader = key(organization, owner, ["billing:read"])
    assert post(reader, [event(1)]).status_code == 403
    assert UsageEvent.objects.count() == 0


def test_only_the_platform_reports_for_other_organizations(
    organization, owner, other_organization, prices
):
    theirs, _ = key(other_organization, other_organization.memberships.get().user, ["inference"])
    _r, customer_reporter = key(organization, owner, ["usage:write"])
    refused = post(customer_reporter, [event(1, key=theirs.public_id)])
    assert refused.json()["errors"] == [
        {"index": 0, "param": "events[0].key", "code": "unknown_key", "message": "unknown key"}
    ]
    Organization.objects.filter(pk=organization.pk).update(is_platform=True)
    cache.clear()  # the reporter's key is cached for up to 5 seconds
    accepted = post(customer_reporter, [event(1, key=theirs.public_id)])
    assert accepted.json()["accepted"] == 1
    assert UsageEvent.objects.get().organization == other_organization


def test_hours_are_priced_booked_and_metered_once(organization, owner, prices, stripe_api):
    accounts.billing_account_ensure(organization)
    _r, raw = key(organization, owner, ["usage:write"])
    post(raw, [event(n) for n in range(4)])
    with responses.RequestsMock() as fake:
        fake.add_passthru(stripe_api)
        fake.add(
            responses.POST,
            f"{stripe_api}/v1/billing/meter_events",
            json={"object": "billing.meter_event", "event_name": "hyperblock_tokens"},
        )
        assert usage.usage_aggregate() == 1
        assert usage.usage_aggregate() == 0  # nothing new
        sent = [c.request for c in fake.calls if "meter_events" in c.request.url]
    hour = UsageHour.objects.get()
    # 4,000 input tokens at $0.60/M and 2,000 output at $2.40/M = $0.0024 + $0.0048 -> $0.01
    assert (hour.input_tokens, hour.output_tokens, hour.cost) == (4000, 2000, Decimal("0.01"))
    assert hour.pushed_at is not None
    assert list(LedgerEntry.objects.values_list("kind", "amount")) == [("usage", Decimal("0.01"))]
    assert len(sent) == 1
    assert f"identifier=hb-usage-{hour.pk}-6000" in sent[0].body
    assert sent[0].headers["Idempotency-Key"] == f"meter:hb-usage-{hour.pk}-6000"


def test_usage_summary(organization, owner, prices, stripe_api):
    accounts.billing_account_ensure(organization)
    _r, raw = key(organization, owner, ["usage:write", "billing:read"])
    post(raw, [event(1)])
    with responses.RequestsMock() as fake:
        fake.add_passthru(stripe_api)
        fake.add(
            responses.POST,
            f"{stripe_api}/v1/billing/meter_events",
            json={"object": "billing.meter_event"},
        )
        usage.usage_aggregate()
    summary = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/usage/").json()
    assert summary == {
        "days": [
            {
                "date": "2026-12-01",
                "model": "llama-70b",
                "input_tokens": 1000,
                "output_tokens": 500,
                "cost": "0.00",
            }
        ]
    }


def test_usage_page_charts_days_and_keys(
    organization, owner, prices, stripe_api, other_organization
):
    from django.urls import reverse

    from tests.conftest import client_for

    accounts.billing_account_ensure(organization)
    record, raw = key(organization, owner, ["usage:write", "inference"])
    post(raw, [event(1), event(2)])
    with responses.RequestsMock() as fake:
        fake.add_passthru(stripe_api)
        fake.add(
            responses.POST,
            f"{stripe_api}/v1/billing/meter_events",
            json={"object": "billing.meter_event"},
        )
        usage.usage_aggregate()
    page = client_for(owner).get(reverse("usage", args=[organization.slug]))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-testid="usage-chart"' in html
    assert [d["tokens"] for d in page.context["days"]] == [3000]
    assert [(r["api_key__public_id"], r["input_tokens"]) for r in page.context["per_key"]] == [
        (record.public_id, 2000)
    ]
    theirs = client_for(other_organization.memberships.get().user).get(
        reverse("usage", args=[other_organization.slug])
    )
    assert theirs.context["days"] == []
