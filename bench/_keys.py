"""Authenticate the same request thousands of times with each scheme and time it."""

import time
from datetime import timedelta

from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.request import Request
from rest_framework_api_key.models import APIKey
from rest_framework_api_key.permissions import HasAPIKey

from accounts import api_keys
from accounts.api_auth import ApiKeyAuthentication
from accounts.models import ApiKey

from . import fixtures
from .database import Database, progress
from .stats import summarize_ms

TARGET_RATIO = 10


def _time(check, requests: int) -> tuple[list[float], int]:
    latencies = []
    for _ in range(requests):
        began = time.perf_counter()
        check()
        latencies.append(time.perf_counter() - began)
    with CaptureQueriesContext(connection) as queries:
        check()
    return latencies, len(queries.captured_queries)


def run(*, db: Database, quick: bool) -> dict:
    requests = 500 if quick else 3000
    organization, owner = fixtures.verified_owner("bench-keys")
    _ours, ours_raw = api_keys.api_key_create(
        organization=organization, actor=owner, name="ours", scopes=["reservations:read"]
    )
    _theirs, theirs_raw = APIKey.objects.create_key(name="theirs")
    factory = RequestFactory()
    ours_request = Request(
        factory.get("/api/v1/reservations/", HTTP_AUTHORIZATION=f"Bearer {ours_raw}")
    )
    theirs_request = Request(
        factory.get("/api/v1/reservations/", HTTP_AUTHORIZATION=f"Api-Key {theirs_raw}")
    )
    authentication, permission = ApiKeyAuthentication(), HasAPIKey()

    def ours() -> None:
        assert authentication.authenticate(ours_request) is not None

    def theirs() -> None:
        assert permission.has_permission(theirs_request, None)

    progress(f"{requests:,} authentications with each")
    ours(), theirs()  # warm up
    ours_times, ours_queries = _time(ours, requests)
    theirs_times, theirs_queries = _time(theirs, max(200, requests // 10))
    # A cold request (nothing cached) costs one query; a revoked key stops within the cache time.
    from django.core.cache import cache

    cache.clear()
    _cold, cold_queries = _time(ours, 0)
    ApiKey.objects.filter(organization=organization).update(
        revoked_at=timezone.now() - timedelta(seconds=1)
    )
    ours_summary, theirs_summary = summarize_ms(ours_times), summarize_ms(theirs_times)
    ratio = theirs_summary["p50"] / ours_summary["p50"] if ours_summary["p50"] else 0
    return {
        "ours": {**ours_summary, "queries_cached": ours_queries, "queries_cold": cold_queries},
        "has_api_key": {**theirs_summary, "queries": theirs_queries},
        "median_ratio": round(ratio, 1),
        "passed": ratio >= TARGET_RATIO and cold_queries <= 1 and ours_queries == 0,
    }
