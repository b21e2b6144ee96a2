"""Writes: reserve, cancel, extend, and expire lapsed holds.

Allocation is serialized per pool (GPU model and region): the allocating transaction locks the
pool's cluster rows in primary-key order (with a lock timeout on PostgreSQL) before it reads
free nodes, so competing customers queue and the loser gets a clean "no longer available".
On SQLite the immediate transaction already holds the database's write lock. The exclusion
constraint on PostgreSQL is the guarantee behind both.
"""

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts import credit
from accounts.guards import require_active_organization, require_permission, require_verified_email
from accounts.models import Organization, User
from accounts.permissions import Permission
from accounts.services.organizations import organization_lock
from core import audit
from core.errors import Conflict, ServiceError

from . import extensions, lifecycle, offerings, pricing, provisioning, selectors
from .models import Allocation, Cluster, GpuModel, Region, Reservation
from .pools import pool_lock
from .windows import Window, validate_node_count

S = Reservation.State


class SoldOut(Conflict):
    """The capacity asked for is not (or no longer) free; `alternatives` says what is."""

    default_code = "capacity_unavailable"

    def __init__(
        self, message: str, *, alternatives: list[offerings.Offering] | None = None
    ) -> None:
        super().__init__(message)
        self.alternatives = alternatives or []


def _after_candidates() -> None:
    """Runs between reading free nodes and writing allocations; tests use it to force races."""


def _expire_lapsed_holds(clusters: list[Cluster], now: datetime) -> None:
    extensions.lapsed_extensions_expire(now, [c.pk for c in clusters])
    for reservation in selectors.lapsed_holds(now, [c.pk for c in clusters]):
        lifecycle.reservation_transition(
            reservation=reservation, to=S.EXPIRED, actor=None, reason="The payment hold lapsed."
        )


def _allocate(
    clusters: list[Cluster], node_count: int, window: Window
) -> tuple[Cluster, list[int]] | None:
    """Choose a cluster and its nodes. Call with the pool locked."""
    free = selectors.free_nodes_in_pool([c.pk for c in clusters], window.starts_at, window.ends_at)
    fitting = [c for c in clusters if len(free.get(c.pk, ())) >= node_count]
    if not fitting:
        return None
    # Best fit: the fullest cluster that still fits keeps large blocks free elsewhere.
    cluster = min(fitting, key=lambda c: (len(free[c.pk]), c.pk))
    return cluster, free[cluster.pk][:node_count]


def _sold_out(
    organization: Organization, gpu_model: GpuModel, region: Region, node_count: int, window: Window
) -> SoldOut:
    alternatives = offerings.search(
        organization=organization,
        gpu_model=gpu_model,
        region=region,
        node_count=node_count,
        window=window,
    )
    return SoldOut(
        f"{node_count} × {gpu_model.name} in {region.name} is no longer available for that "
        "window. Pick one of the alternatives.",
        alternatives=alternatives,
    )


def reservation_create(
    *,
    organization: Organization,
    user: User,
    gpu_model: GpuModel,
    region: Region,
    node_count: int,
    window: Window,
    request_token: str | None = None,
) -> Reservation:
    """Hold whole nodes of one cluster for the window while the customer pays.

    Organizations on invoice terms are confirmed straight to `scheduled`. A repeated
    `request_token` (a form submitted twice) returns the reservation it already made.
    """
    require_permission(
        actor=user, organization=organization, permission=Permission.MANAGE_RESERVATIONS
    )
    require_verified_email(user)
    require_active_organization(organization)
    validate_node_count(node_count)
    if request_token:
        existing = Reservation.objects.filter(
            organization=organization, request_token=request_token
        ).first()
        if existing is not None:
            return existing
    credit.require_reservations_allowed(organization)  # billing: nothing long overdue or lost
    quote = pricing.quote_for_sale(
        organization=organization,
        gpu_model=gpu_model,
        region=region,
        node_count=node_count,
        starts_at=window.starts_at,
        ends_at=window.ends_at,
    )
    return capacity_hold(
        organization=organization,
        created_by=user,
        gpu_model=gpu_model,
        region=region,
        node_count=node_count,
        window=window,
        price=quote,
        hold_expires_at=timezone.now() + settings.CAPACITY_HOLD,
        request_token=request_token,
    )


def capacity_hold(
    *,
    organization: Organization,
    created_by: User | None,
    gpu_model: GpuModel,
    region: Region,
    node_count: int,
    window: Window,
    price: pricing.Quote,
    hold_expires_at: datetime,
    request_token: str | None = None,
    quoted_by: User | None = None,
    quote_note: str = "",
) -> Reservation:
    """Allocate nodes for a new held reservation under the pool lock, or raise SoldOut.

    The one allocator behind customers' reservations and sales' quotes (capacity.quotes). A
    customer's reservation on invoice terms is confirmed at once; a quote stays held until the
    customer pays or accepts it. Callers check who may do this and validate the request.
    """
    clusters = selectors.pool_clusters(gpu_model, region)
    if not clusters:
        raise ServiceError(f"{gpu_model.name} is not offered in {region.name}.", param="region")
    try:
        return _create_locked(
            organization=organization,
            user=created_by,
            gpu_model=gpu_model,
            region=region,
            node_count=node_count,
            window=window,
            quote=price,
            clusters=clusters,
            request_token=request_token,
            hold_expires_at=hold_expires_at,
            quoted_by=quoted_by,
            quote_note=quote_note,
        )
    except _NoCapacity:
        raise _sold_out(organization, gpu_model, region, node_count, window) from None


class _NoCapacity(Exception):
    pass


@transaction.atomic
def _create_locked(
    *,
    organization: Organization,
    user: User | None,
    gpu_model: GpuModel,
    region: Region,
    node_count: int,
    window: Window,
    quote: pricing.Quote,
    clusters: list[Cluster],
    request_token: str | None,
    hold_expires_at: datetime,
    quoted_by: User | None,
    quote_note: str,
) -> Reservation:
    now = timezone.now()
    reservation = Reservation(
        organization=organization,
        created_by=user,
        gpu_model=gpu_model,
        region=region,
        node_count=node_count,
        starts_at=window.starts_at,
        ends_at=window.ends_at,
        starts_on_payment=window.starts_on_payment,
        state=S.HELD,
        hold_expires_at=hold_expires_at,
        currency=quote.currency,
        price_per_gpu_hour=quote.price_per_gpu_hour,
        price_source=quote.price_source,
        subtotal=quote.subtotal,
        discount=quote.discount,
        total=quote.total,
        price_lines=quote.lines_json(),
        request_token=request_token or "",
        quoted_by=quoted_by,
        quote_note=quote_note,
    )
    # Validated before the lock, which every allocator of the pool waits for; the database's
    # constraints check the rest (uniqueness, the cluster chosen below) on insert.
    # The related objects are in hand, so their foreign keys need no lookups either.
    reservation.full_clean(
        exclude=["cluster", "organization", "created_by", "gpu_model", "region", "quoted_by"],
        validate_unique=False,
        validate_constraints=False,
    )
    if organization.on_invoice_terms and quoted_by is None:
        # Confirmed below without a payment: it has to fit in the credit line. The row lock
        # makes concurrent confirmations take turns (locks are always taken organization
        # first, then the pool).
        credit.require_credit(organization=organization_lock(organization), amount=quote.total)
    pool_lock(clusters)
    if request_token:  # the same form may have won the lock a moment ago
        existing = Reservation.objects.filter(
            organization=organization, request_token=request_token
        ).first()
        if existing is not None:
            return existing
    _expire_lapsed_holds(clusters, now)
    choice = _allocate(clusters, node_count, window)
    if choice is None:
        raise _NoCapacity
    cluster, node_ids = choice
    _after_candidates()
    reservation.cluster = cluster
    reservation.save()
    Allocation.objects.bulk_create(
        Allocation(
            reservation=reservation,
            node_id=node_id,
            cluster=cluster,
            starts_at=window.starts_at,
            ends_at=window.ends_at,
        )
        for node_id in node_ids
    )
    if quoted_by is not None:
        audit.record(
            action="reservation.quoted",
            actor=quoted_by,
            organization=organization,
            target=reservation,
            data={
                "to": S.HELD,
                "total": str(quote.total),
                "currency": quote.currency,
                "price_source": quote.price_source,
                "price_per_gpu_hour": str(quote.price_per_gpu_hour),
                "valid_until": hold_expires_at.isoformat(),
            },
            reason=quote_note,
        )
        return reservation
    audit.record(
        action="reservation.created",
        actor=user,
        organization=organization,
        target=reservation,
        data={"to": S.HELD, "total": str(quote.total), "currency": quote.currency},
    )
    if organization.on_invoice_terms:
        reservation = lifecycle.reservation_transition(
            reservation=reservation,
            to=S.SCHEDULED,
            actor=user,
            reason=f"Confirmed on invoice terms (net {organization.payment_days}).",
        )
    return reservation


# --- Confirmation (payment received) ----------------------------------------------------------
def reservation_confirm(
    *, reservation: Reservation, actor: User | None, reason: str, notify: bool = True
) -> Reservation:
    """Confirm a paid reservation: held (or expired by a late payment) becomes scheduled, and
    one paid at or after its start goes straight on to provisioning.

    A hold that already expired gets nodes again under the pool lock, the same nodes when they
    are still free; when the pool has no room any more this raises SoldOut and the caller
    refunds. Confirming a reservation that is already scheduled or further on changes nothing.
    """
    clusters = selectors.pool_clusters(reservation.gpu_model, reservation.region)
    try:
        confirmed = _confirm_locked(
            reservation=reservation, actor=actor, reason=reason, clusters=clusters, notify=notify
        )
    except _NoCapacity:
        raise SoldOut(
            f"The hold on {reservation.public_id} lapsed and its capacity has been taken since.",
        ) from None
    lead = timezone.now() + settings.PROVISIONING_LEAD
    if confirmed.state == S.SCHEDULED and confirmed.starts_at <= lead:
        provisioning.reservation_start(confirmed)
    return confirmed


@transaction.atomic
def _confirm_locked(
    *,
    reservation: Reservation,
    actor: User | None,
    reason: str,
    clusters: list[Cluster],
    notify: bool,
) -> Reservation:
    pool_lock(clusters)
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    if locked.state == S.HELD:
        return lifecycle.reservation_transition(
            reservation=locked, to=S.SCHEDULED, actor=actor, reason=reason, notify=notify
        )
    if locked.state != S.EXPIRED:
        if locked.state in lifecycle.FINAL:
            raise Conflict(
                f"{locked.public_id} is {locked.get_state_display().lower()}; "
                "it cannot be confirmed.",
                code="not_confirmable",
            )
        return locked  # already confirmed: a repeated payment notice changes nothing
    now = timezone.now()
    window = Window(max(locked.starts_at, now.replace(second=0, microsecond=0)), locked.ends_at)
    if window.ends_at <= window.starts_at:
        raise _NoCapacity
    previous = list(locked.allocations.values_list("node_id", flat=True))
    free = set(selectors.free_node_ids(locked.cluster, window.starts_at, window.ends_at))
    if set(previous) <= free:
        cluster, node_ids = locked.cluster, previous
    else:
        choice = _allocate(clusters, locked.node_count, window)
        if choice is None:
            raise _NoCapacity
        cluster, node_ids = choice
    locked.allocations.all().delete()
    Allocation.objects.bulk_create(
        Allocation(
            reservation=locked, node_id=node_id, cluster=cluster,
            starts_at=locked.starts_at, ends_at=locked.ends_at,
        )
        for node_id in node_ids
    )  # fmt: skip
    return lifecycle.reservation_transition(
        reservation=locked,
        to=S.SCHEDULED,
        actor=actor,
        reason=f"{reason} Paid after the hold lapsed; capacity was still free.",
        notify=notify,
        data={"reallocated": sorted(node_ids) != sorted(previous)},
        fields={"cluster": cluster},
    )


# --- Cancellation ------------------------------------------------------------------------------
# What a customer writes when canceling is kept to this length (the form says so; the API
# keeps the start of a longer text). Staff reasons follow core.staff.reason_clean instead.
CUSTOMER_REASON_MAX = 500


def refund_percent(reservation: Reservation, now: datetime | None = None) -> int:
    """The share of the price the cancellation policy gives back at `now` (0 for unpaid holds)."""
    notice = reservation.starts_at - (now or timezone.now())
    if reservation.state == S.HELD or notice <= timedelta(0):
        return 0
    for minimum_notice, percent in settings.CAPACITY_CANCELLATION_POLICY:
        if notice >= minimum_notice:
            return percent
    return 0


def refund_amount(reservation: Reservation, now: datetime | None = None) -> Decimal:
    return pricing.money(reservation.total * refund_percent(reservation, now) / 100)


CANCELABLE = (S.HELD, S.SCHEDULED)


@transaction.atomic
def reservation_cancel(*, reservation: Reservation, actor: User, reason: str = "") -> Reservation:
    """Cancel before the start. A scheduled reservation gets the policy's refund as `refund_due`."""
    require_permission(
        actor=actor,
        organization=reservation.organization,
        permission=Permission.MANAGE_RESERVATIONS,
    )
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    now = timezone.now()
    if locked.state not in CANCELABLE:
        raise Conflict(
            f"This reservation is {locked.get_state_display().lower()} and can no longer be "
            "canceled here.",
            code="not_cancelable",
        )
    if locked.state == S.SCHEDULED and locked.starts_at <= now:
        raise Conflict(
            "This reservation has started and can no longer be canceled.", code="not_cancelable"
        )
    paid = locked.state == S.SCHEDULED
    refund = refund_amount(locked, now) if paid else None
    return lifecycle.reservation_transition(
        reservation=locked,
        to=S.CANCELED,
        actor=actor,
        reason=reason.strip()[:CUSTOMER_REASON_MAX] or "Canceled by the customer.",
        data={
            "refund_due": str(refund) if refund is not None else None,
            "refund_percent": refund_percent(locked, now) if paid else None,
        },
        fields={"refund_due": refund},
    )


# --- Extension ---------------------------------------------------------------------------------
# Quoted, held, paid, then applied: capacity/extensions.py; billing collects the money.
EXTENDABLE = extensions.EXTENDABLE


# --- Holds ------------------------------------------------------------------------------------
def lapsed_holds_expire(now: datetime | None = None) -> int:
    """Expire every hold past its time and free its nodes. Running it twice changes nothing."""
    now = now or timezone.now()
    expired = 0
    for reservation in selectors.lapsed_holds(now):
        try:
            lifecycle.reservation_transition(
                reservation=reservation, to=S.EXPIRED, actor=None, reason="The payment hold lapsed."
            )
        except lifecycle.IllegalTransition:  # paid or canceled meanwhile
            continue
        expired += 1
    return expired + extensions.lapsed_extensions_expire(now)
