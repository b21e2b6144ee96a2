import hmac
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from accounts import selectors as account_selectors
from accounts.decorators import MemberRequest, org_member
from accounts.permissions import Permission, can
from billing import selectors as billing_selectors
from capacity import selectors as capacity_selectors

from .celery import app as celery_app

logger = logging.getLogger(__name__)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The public front page; a signed-in user goes straight on to their last organization
    (every "back to the console" link and sign-in lands here)."""
    if not request.user.is_authenticated:
        return front_page(request)
    memberships = list(account_selectors.memberships_for_user(request.user))
    if not memberships:
        return redirect("organization-create")
    last = request.session.get("organization")
    chosen = next((m for m in memberships if m.organization.slug == last), memberships[0])
    return redirect("dashboard", slug=chosen.organization.slug)


def front_page(request: HttpRequest) -> HttpResponse:
    context = {
        "price_list": capacity_selectors.price_list(),
        "discounts": capacity_selectors.duration_discounts(),
        "model_prices": billing_selectors.model_prices(),
        "max_nodes": settings.CAPACITY_MAX_NODES,
        "max_lead_weeks": settings.CAPACITY_MAX_LEAD.days // 7,
    }
    return render(request, "portal/front.html", context)


@org_member(Permission.VIEW_ORGANIZATION)
@require_GET
def dashboard(request: MemberRequest) -> HttpResponse:
    organization = request.organization
    role = request.membership.role
    team = account_selectors.memberships_for_org(organization)
    reservations = capacity_selectors.reservations_for_org(organization)
    month_start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    context = {
        "spend_this_month": billing_selectors.spend_for_org(organization, month_start),
        "may_see_billing": can(role, Permission.VIEW_BILLING),
        "counts": capacity_selectors.reservation_counts(organization),
        "upcoming": reservations.filter(state__in=capacity_selectors.LIVE_STATES).order_by(
            "starts_at"
        )[:5],
        "has_reservations": reservations.exists(),
        "member_count": team.count(),
        "pending_invitations": account_selectors.pending_invitation_count(organization),
        "may_manage_team": can(role, Permission.MANAGE_TEAM),
        "may_reserve": can(role, Permission.MANAGE_RESERVATIONS),
        "may_manage_org": can(role, Permission.MANAGE_ORGANIZATION),
        "details_complete": bool(organization.legal_name and organization.address),
    }
    return render(request, "portal/dashboard.html", context)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches nothing else."""
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_broker() -> None:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT)
        # The filesystem transport "connects" to anything; make sure its folder is usable.
        options = conn.transport_options or {}
        folder = options.get("data_folder_out")
        if folder and not Path(folder).is_dir():
            raise OSError(f"broker folder {folder} does not exist")


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database and the broker are reachable; 503 names the part that is not."""
    checks = {"database": _check_database, "broker": _check_broker}
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; it is reported
            logger.warning("readiness check %s failed: %s", name, exc)
            results[name] = f"error: {type(exc).__name__}"
        else:
            results[name] = "ok"
    ready = all(value == "ok" for value in results.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": results},
        status=200 if ready else 503,
    )


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    return render(request, "500.html", status=500)


class _DatabaseFigures:
    """Figures read from the database when /metrics is scraped."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(
            "hyperblock_reservations", "Reservations by state.", labels=["state"]
        )
        for state, count in capacity_selectors.reservations_by_state().items():
            by_state.add_metric([state], count)
        yield by_state
        backlog, oldest = billing_selectors.webhook_backlog()
        yield GaugeMetricFamily(
            "hyperblock_webhook_backlog_events",
            "Stripe events received and not processed yet.",
            value=backlog,
        )
        age = (timezone.now() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "hyperblock_webhook_oldest_unprocessed_seconds",
            "How long the oldest unprocessed Stripe event has waited.",
            value=age,
        )


def _may_scrape(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), token.encode())
    return request.META.get("REMOTE_ADDR") in {"127.0.0.1", "::1"}


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics: requests (django-prometheus), tasks and webhook lag (core.metrics),
    reservations by state and the webhook backlog. Answers a scraper holding METRICS_TOKEN, or
    without one set, loopback only (404 to anyone else, as if there were nothing here)."""
    if not _may_scrape(request):
        return render(request, "404.html", status=404)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
    else:
        processes = REGISTRY
    figures = CollectorRegistry()
    figures.register(_DatabaseFigures())
    body = generate_latest(processes) + generate_latest(figures)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
