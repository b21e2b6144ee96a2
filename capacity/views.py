from collections.abc import Mapping
from datetime import date
from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.decorators import MemberRequest, org_member
from accounts.permissions import Permission, can
from core import audit, crypto
from core.errors import ServiceError
from core.forms import add_service_error

from . import availability, offerings, pricing, quotes, selectors, services
from .forms import (
    CalendarForm,
    CancelForm,
    ExtendForm,
    OfferingSearchForm,
    ReserveForm,
    new_request_token,
)
from .lifecycle import SETTLED
from .models import Extension, Reservation

ROLE_GATE = "Your role can look at capacity but not reserve it. Ask an owner or admin."


def _gate(request: MemberRequest) -> str:
    """Why this member cannot reserve right now, or an empty string."""
    if not can(request.membership.role, Permission.MANAGE_RESERVATIONS):
        return ROLE_GATE
    if not request.user.is_verified:
        return "Verify your e-mail address before reserving: use the link we sent you."
    if not request.organization.is_active:
        return f"{request.organization.name} is suspended, so it cannot reserve capacity."
    return ""


# What the search page and the calendar hand each other in their links.
CARRIED = ("gpu_model", "region", "node_count", "duration_hours")


def _carried(values: Mapping[str, object]) -> str:
    """A query string of the carried fields that have a value, in a fixed order."""
    kept = {key: values.get(key) for key in CARRIED}
    return urlencode({key: str(value) for key, value in kept.items() if value not in (None, "")})


@org_member(Permission.VIEW_RESERVATIONS)
@require_GET
def capacity_search(request: MemberRequest) -> HttpResponse:
    form = OfferingSearchForm(request.GET or None)
    results = None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        results = offerings.search(
            organization=request.organization,
            gpu_model=data["gpu_model"],
            region=data["region"],
            node_count=data["node_count"],
            window=data["window"],
        )
    context = {
        "form": form,
        "results": results,
        "kinds": offerings.KIND_LABELS,
        "gate": _gate(request),
        # The calendar opens on the GPU, region and size of the search as it stands.
        "calendar_query": _carried(request.GET.dict()),
    }
    if request.htmx and request.htmx.target == "offerings":
        return render(request, "capacity/_offerings.html", {**context, "swap_links": True})
    return render(request, "capacity/search.html", context)


@org_member(Permission.VIEW_RESERVATIONS)
@require_GET
def capacity_calendar(request: MemberRequest) -> HttpResponse:
    form = CalendarForm(request.GET)
    gpu_models = list(selectors.gpu_models())
    regions = list(selectors.regions())
    gpu_model = form.value("gpu_model") or (gpu_models[0] if gpu_models else None)
    region = form.value("region") or (regions[0] if regions else None)
    node_count = form.value("node_count") or 1
    duration = form.value("duration_hours")
    week_of: date | None = form.value("week")
    calendar = None
    if gpu_model and region:
        calendar = (
            availability.by_hour(gpu_model, region, week_of, node_count)
            if week_of
            else availability.by_day(gpu_model, region, node_count)
        )
    carried = {
        "gpu_model": gpu_model.slug if gpu_model else "",
        "region": region.code if region else "",
        "node_count": node_count,
        "duration_hours": duration,
    }
    context = {
        "calendar": calendar,
        "gpu_models": gpu_models,
        "regions": regions,
        "gpu_model": gpu_model,
        "region": region,
        "node_count": node_count,
        "duration_hours": duration,
        "query": _carried(carried),
        # A clicked hour opens the search for that start: one hour unless a length came along.
        "search_query": _carried({**carried, "duration_hours": duration or 1}),
        "shades": list(zip(availability.SHADES, availability.SHADE_NAMES, strict=True)),
        "now": timezone.now(),
    }
    if request.htmx and request.htmx.target == "calendar":
        return render(request, "capacity/_calendar.html", context)
    return render(request, "capacity/calendar.html", context)


@org_member(Permission.VIEW_RESERVATIONS)
@require_http_methods(["GET", "POST"])
def reservation_new(request: MemberRequest) -> HttpResponse:
    """Quote a block (live while the form changes) and reserve it."""
    gate = _gate(request)
    if request.method == "POST":
        form = ReserveForm(request.POST)
    elif request.GET:
        # A quote (or an offering picked on the search page): give the form its one-time token.
        params = request.GET.copy()
        params.setdefault("request_token", new_request_token())
        form = ReserveForm(params)
    else:
        form = ReserveForm()
    quote = None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        if request.method == "POST" and not gate:
            try:
                reservation = services.reservation_create(
                    organization=request.organization,
                    user=request.user,
                    gpu_model=data["gpu_model"],
                    region=data["region"],
                    node_count=data["node_count"],
                    window=data["window"],
                    request_token=data["request_token"],
                )
            except services.SoldOut as exc:
                add_service_error(form, exc)
                context = {
                    "form": form,
                    "gate": gate,
                    "alternatives": exc.alternatives,
                    "kinds": offerings.KIND_LABELS,
                }
                return render(request, "capacity/reservation_new.html", context, status=409)
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                if reservation.state == Reservation.State.SCHEDULED:
                    messages.success(request, "Reserved and confirmed on your invoice terms.")
                else:
                    messages.success(request, "Reserved. The nodes are held for you while you pay.")
                return redirect(
                    "reservation-detail",
                    slug=request.organization.slug,
                    public_id=reservation.public_id,
                )
        else:
            quote = _quote_or_none(request, data)
    context = {"form": form, "quote": quote, "gate": gate, "kinds": offerings.KIND_LABELS}
    if request.htmx and request.htmx.target == "quote":
        return render(request, "capacity/_quote.html", context)
    status = 200
    if request.method == "POST":
        status = 403 if gate == ROLE_GATE else 400
    return render(request, "capacity/reservation_new.html", context, status=status)


def _quote_or_none(request: MemberRequest, data: dict) -> dict | None:
    window = data["window"]
    try:
        quote = pricing.quote(
            organization=request.organization,
            gpu_model=data["gpu_model"],
            region=data["region"],
            node_count=data["node_count"],
            starts_at=window.starts_at,
            ends_at=window.ends_at,
        )
    except pricing.PriceUnavailable:
        return None
    clusters = selectors.pool_clusters(data["gpu_model"], data["region"])
    free = selectors.free_nodes_by_cluster(
        [c.pk for c in clusters], window.starts_at, window.ends_at
    )
    return {
        "quote": quote,
        "window": window,
        "free": max(free.values(), default=0),
        "node_count": data["node_count"],
    }


@org_member(Permission.VIEW_RESERVATIONS)
@require_GET
def reservation_list(request: MemberRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    reservations = selectors.reservations_for_org(request.organization).select_related("quoted_by")
    if state in Reservation.State.values:
        reservations = reservations.filter(state=state)
    else:
        state = ""
    return render(
        request,
        "capacity/reservation_list.html",
        {"reservations": reservations[:200], "state": state, "states": Reservation.State.choices},
    )


def _detail_context(request: MemberRequest, reservation: Reservation) -> dict:
    may_manage = can(request.membership.role, Permission.MANAGE_RESERVATIONS)
    now = timezone.now()
    is_quote = quotes.reservation_is_quote(reservation)
    open_quote = (
        is_quote
        and reservation.state == Reservation.State.HELD
        and (reservation.hold_expires_at is None or reservation.hold_expires_at > now)
    )
    return {
        "reservation": reservation,
        # SSH endpoints and the kubeconfig: only for roles that run work on the nodes.
        "may_use_hardware": can(request.membership.role, Permission.USE_HARDWARE),
        "is_quote": is_quote,
        "may_accept": may_manage and open_quote and request.organization.on_invoice_terms,
        "timeline": selectors.reservation_timeline(reservation).select_related("actor"),
        "may_cancel": may_manage and reservation.state in services.CANCELABLE,
        "may_extend": may_manage and reservation.state in services.EXTENDABLE,
        "settled": reservation.state in SETTLED,
        "extend_form": ExtendForm(),
        "extensions": list(selectors.extensions_for_reservation(reservation)[:20]),
        "pending_extension": selectors.extensions_for_reservation(reservation)
        .filter(state=Extension.State.HELD, hold_expires_at__gt=now)
        .first(),
        "now": now,
    }


def _reservation(request: MemberRequest, public_id: str) -> Reservation | None:
    return selectors.reservation_for_org(request.organization, public_id)


@org_member(Permission.VIEW_RESERVATIONS)
@require_GET
def reservation_detail(request: MemberRequest, public_id: str) -> HttpResponse:
    reservation = _reservation(request, public_id)
    if reservation is None:
        return render(request, "404.html", status=404)
    return render(
        request, "capacity/reservation_detail.html", _detail_context(request, reservation)
    )


@org_member(Permission.VIEW_RESERVATIONS)
@require_GET
def reservation_status(request: MemberRequest, public_id: str) -> HttpResponse:
    """htmx: the state, timeline and access panel; polls itself while a transition runs."""
    reservation = _reservation(request, public_id)
    if reservation is None:
        return render(request, "404.html", status=404)
    response = render(request, "capacity/_live.html", _detail_context(request, reservation))
    if request.GET.get("shown") not in (None, reservation.state):
        response["HX-Refresh"] = "true"  # the state moved on: redraw the whole page once
    return response


@org_member(Permission.USE_HARDWARE)
@require_GET
def reservation_kubeconfig(request: MemberRequest, public_id: str) -> HttpResponse:
    reservation = _reservation(request, public_id)
    if (
        reservation is None
        or reservation.state != Reservation.State.ACTIVE
        or not reservation.access_secret
    ):
        return render(request, "404.html", status=404)
    response = HttpResponse(
        crypto.decrypt(reservation.access_secret), content_type="application/yaml"
    )
    response["Content-Disposition"] = f'attachment; filename="{reservation.public_id}.kubeconfig"'
    response["Cache-Control"] = "no-store"
    audit.record(
        action="reservation.kubeconfig_downloaded",
        actor=request.user,
        organization=request.organization,
        target=reservation,
    )
    return response


@org_member(Permission.MANAGE_RESERVATIONS)
@require_http_methods(["GET", "POST"])
def reservation_cancel(request: MemberRequest, public_id: str) -> HttpResponse:
    reservation = _reservation(request, public_id)
    if reservation is None:
        return render(request, "404.html", status=404)
    form = CancelForm(request.POST or None)
    declining = (
        quotes.reservation_is_quote(reservation) and reservation.state == Reservation.State.HELD
    )
    if request.method == "POST" and form.is_valid():
        reason = form.cleaned_data["reason"]
        if declining:
            reason = f"Quote declined: {reason}" if reason else "Quote declined by the customer."
        try:
            reservation = services.reservation_cancel(
                reservation=reservation, actor=request.user, reason=reason
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            if declining:
                messages.success(request, "Quote declined. The nodes are released.")
            elif reservation.refund_due:
                messages.success(
                    request,
                    f"Canceled. {reservation.currency.upper()} {reservation.refund_due} will be "
                    "refunded to the original payment method.",
                )
            else:
                messages.success(request, "Canceled. The nodes are released.")
        return redirect("reservation-detail", slug=request.organization.slug, public_id=public_id)
    # The refund shown is the one canceling gives: the policy's share of what was paid.
    refund = services.cancellation_quote(reservation)
    context = {
        **_detail_context(request, reservation),
        "form": form,
        "declining": declining,
        "refund": refund,
        "paid": (
            services.settled_money(reservation)
            if reservation.state == Reservation.State.SCHEDULED
            else None
        ),
    }
    return render(request, "capacity/reservation_cancel.html", context)


@org_member(Permission.MANAGE_RESERVATIONS)
@require_POST
def quote_accept(request: MemberRequest, public_id: str) -> HttpResponse:
    """Accept a quote on invoice terms (card customers pay it instead)."""
    reservation = _reservation(request, public_id)
    if reservation is None:
        return render(request, "404.html", status=404)
    try:
        quotes.quote_accept(reservation=reservation, actor=request.user)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            "Quote accepted and the reservation confirmed. It is invoiced on your terms "
            f"(net {request.organization.payment_days} days).",
        )
    return redirect("reservation-detail", slug=request.organization.slug, public_id=public_id)
