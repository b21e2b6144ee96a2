"""Writes: reserve, cancel, extend, and expire lapsed holds.

Allocation is serialized per pool (GPU model and region): the allocating transaction locks the
pool's cluster rows in primary-key order (with a lock timeout on PostgreSQL) before it reads
free nodes, so competing customers queue and the loser gets a clean "no longer available".
On SQLite the immediate transaction already holds the database's write lock. The exclusion
constraint on PostgreSQL is the guarantee behind both.
"""

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts import credit
from accounts.guards import require_active_organization, require_permission, require_verified_email
from accounts.models import Organization, User
from accounts.permissions import Permission
from core import audit
from core.errors import Conflict, ServiceError
from core.money import format_money

from . import extensions, lifecycle, limits, offerings, pricing, provisioning, selectors

# The cancellation lives in cancellation.py; its names are found here too, as they always were.
from .cancellation import CANCELABLE as CANCELABLE
from .cancellation import CUSTOMER_REASON_MAX as CUSTOMER_REASON_MAX
from .cancellation import CancellationQuote as CancellationQuote
from .cancellation import cancellation_quote as cancellation_quote
from .cancellation import refund_amount as refund_amount
from .cancellation import refund_percent as refund_percent
from .cancellation import reservation_cancel as reservation_cancel
from .cancellation import settled_money as settled_money
from .models import Allocation, Cluster, GpuModel, Region, Reservation
from .pools import pool_lock
from .windows import HOUR, Window, start_now_held_until, validate_node_count

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
    # Every hold of one organization takes its turn on the organization's row (locks are
    # always taken organization first, then the pool): its limits and credit line are checked
    # against holds already written, and its terms are read from the row as they are now, not
    # from the instance the request loaded (sales may have switched them since).
    locked = limits.organization_hold_lock(organization)
    reservation.organization = locked
    require_active_organization(locked)
    if request_token:  # the same form may have won the lock a moment ago
        existing = Reservation.objects.filter(
            organization=locked, request_token=request_token
        ).first()
        if existing is not None:
            return existing
    invoiced = locked.on_invoice_terms and quoted_by is None
    if quoted_by is None:  # sales' quotes are not held to the limits sales sets
        limits.hold_rate_check(locked)
        limits.hold_limits_check(
            organization=locked,
            now=now,
            holds=0 if invoiced else 1,  # confirmed at once: no hold, the credit line caps it
            node_hours=node_count * window.hours,
            nodes=node_count,
        )
    if invoiced:
        # Confirmed below without a payment: it has to fit in the credit line.
        credit.require_credit(organization=locked, amount=quote.total)
    pool_lock(clusters)
    _expire_lapsed_holds(clusters, now)
    held = window
    if window.starts_on_payment and not invoiced:
        # Paid at the hold's last moment it would end this late: hold the nodes that long.
        held = Window(window.starts_at, start_now_held_until(window, hold_expires_at))
    choice = _allocate(clusters, node_count, held)
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
            starts_at=held.starts_at,
            ends_at=held.ends_at,
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
    if invoiced:
        reservation = lifecycle.reservation_transition(
            reservation=reservation,
            to=S.SCHEDULED,
            actor=user,
            reason=f"Confirmed on invoice terms (net {locked.payment_days}).",
        )
    return reservation


# --- Confirmation (payment received) ----------------------------------------------------------
class LatePaymentRefused(Conflict):
    """A payment arrived after the hold lapsed and cannot buy the block: a quote that expired,
    or a price that rose since. The caller refunds it."""

    default_code = "late_payment_refused"


def reservation_confirm(
    *, reservation: Reservation, actor: User | None, reason: str, notify: bool = True
) -> Reservation:
    """Confirm a paid reservation: held (or expired by a late payment) becomes scheduled, and
    one paid at or after its start goes straight on to provisioning. See
    `reservation_confirm_paid` for the rules."""
    return reservation_confirm_paid(
        reservation=reservation, actor=actor, reason=reason, paid=None, notify=notify
    )[0]


def reservation_confirm_paid(
    *,
    reservation: Reservation,
    actor: User | None,
    reason: str,
    paid: Decimal | None,
    notify: bool = True,
) -> tuple[Reservation, Decimal]:
    """Confirm a reservation for which `paid` was received; returns it with what was paid
    beyond its price now (to be refunded: non-zero only for a late payment).

    A block booked to start now starts this minute and runs its whole length from here. A
    hold that already expired is confirmed only when it was no quote (an expired quote's price
    is no longer offered: LatePaymentRefused), its price now is at most `paid` (else
    LatePaymentRefused), and nodes are free again under the pool lock, the same nodes when
    they can be (else SoldOut). Confirming a reservation that is already scheduled or further
    on changes nothing.
    """
    clusters = selectors.pool_clusters(reservation.gpu_model, reservation.region)
    try:
        confirmed, overpaid = _confirm_locked(
            reservation=reservation,
            actor=actor,
            reason=reason,
            clusters=clusters,
            notify=notify,
            paid=paid,
        )
    except _NoCapacity:
        raise SoldOut(
            f"The hold on {reservation.public_id} lapsed and its capacity has been taken since.",
        ) from None
    lead = timezone.now() + settings.PROVISIONING_LEAD
    if confirmed.state == S.SCHEDULED and confirmed.starts_at <= lead:
        # A block that starts now (or whose start is near or past) starts at once.
        provisioning.reservation_start(confirmed)
        confirmed.refresh_from_db()
    return confirmed, overpaid


def _start_now_window(reservation: Reservation, now: datetime) -> Window:
    start = now.replace(second=0, microsecond=0)
    return Window(start, start + reservation.duration_hours * HOUR)


@transaction.atomic
def _confirm_locked(
    *,
    reservation: Reservation,
    actor: User | None,
    reason: str,
    clusters: list[Cluster],
    notify: bool,
    paid: Decimal | None,
) -> tuple[Reservation, Decimal]:
    pool_lock(clusters)
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    now = timezone.now()
    nothing = Decimal("0.00")
    if locked.state == S.HELD:
        fields: dict = {}
        if locked.starts_on_payment:
            # It starts now: its nodes (held to beyond its latest end) are kept for exactly
            # the hours paid for, from this minute.
            window = _start_now_window(locked, now)
            live = locked.allocations.filter(released_at__isnull=True)
            taken = Allocation.objects.filter(
                node_id__in=live.values("node_id"),
                released_at__isnull=True,
                starts_at__lt=window.ends_at,
                ends_at__gt=window.starts_at,
            ).exclude(reservation=locked)
            if taken.exists():
                raise _NoCapacity  # paid after the hold ran out and the hours were taken
            live.update(starts_at=window.starts_at, ends_at=window.ends_at)
            fields = {"starts_at": window.starts_at, "ends_at": window.ends_at}
        confirmed = lifecycle.reservation_transition(
            reservation=locked,
            to=S.SCHEDULED,
            actor=actor,
            reason=reason,
            notify=notify,
            fields=fields,
        )
        return confirmed, nothing
    if locked.state != S.EXPIRED:
        if locked.state in lifecycle.FINAL:
            raise Conflict(
                f"{locked.public_id} is {locked.get_state_display().lower()}; "
                "it cannot be confirmed.",
                code="not_confirmable",
            )
        return locked, nothing  # already confirmed: a repeated payment notice changes nothing
    return _confirm_lapsed(locked, actor, reason, clusters, notify, paid, now)


def _confirm_lapsed(
    locked: Reservation,
    actor: User | None,
    reason: str,
    clusters: list[Cluster],
    notify: bool,
    paid: Decimal | None,
    now: datetime,
) -> tuple[Reservation, Decimal]:
    """A payment for a hold that lapsed: sold again at today's price when it is no higher."""
    if locked.quoted_by_id is not None or locked.price_source == "quote":
        raise LatePaymentRefused(
            f"The quote {locked.public_id} expired before the payment arrived; its price is "
            "no longer offered.",
        )
    if locked.starts_on_payment:
        window = _start_now_window(locked, now)
        runs = window
    else:
        runs = Window(locked.starts_at, locked.ends_at)
        window = Window(max(locked.starts_at, now.replace(second=0, microsecond=0)), runs.ends_at)
    if window.ends_at <= window.starts_at:
        raise _NoCapacity
    try:
        current = pricing.quote(
            organization=locked.organization,
            gpu_model=locked.gpu_model,
            region=locked.region,
            node_count=locked.node_count,
            starts_at=runs.starts_at,
            ends_at=runs.ends_at,
        )
    except pricing.PriceUnavailable:
        raise LatePaymentRefused(
            f"The hold on {locked.public_id} lapsed before the payment arrived, and "
            f"{locked.gpu_model.name} is no longer sold in {locked.region.name}.",
        ) from None
    if paid is not None and (current.currency != locked.currency or current.total > paid):
        raise LatePaymentRefused(
            f"The hold on {locked.public_id} lapsed before the payment arrived, and the "
            f"block now costs {format_money(current.total, current.currency)}, more than was paid.",
        )
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
            starts_at=runs.starts_at, ends_at=runs.ends_at,
        )
        for node_id in node_ids
    )  # fmt: skip
    overpaid = paid - current.total if paid is not None else Decimal("0.00")
    confirmed = lifecycle.reservation_transition(
        reservation=locked,
        to=S.SCHEDULED,
        actor=actor,
        reason=f"{reason} Paid after the hold lapsed; capacity was still free.",
        notify=notify,
        data={
            "reallocated": sorted(node_ids) != sorted(previous),
            "price_now": str(current.total),
            "overpaid": str(overpaid),
        },
        fields={"cluster": cluster, "starts_at": runs.starts_at, "ends_at": runs.ends_at},
    )
    return confirmed, overpaid


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
