"""Extensions: more hours for a scheduled or active block, quoted, held, paid, then applied.

The customer asks for N more hours: `extension_quote` prices them and says whether the
reservation's nodes are free right after its end, changing nothing. `extension_hold` holds
those hours on the same nodes (a hold like a new reservation's, expiring after
CAPACITY_HOLD) while billing collects the money; `extension_confirm_paid`, called by billing once
the payment succeeded (`extension_apply` for an issued invoice), moves the reservation's end and
adds the price to its total. Staff may grant hours instead (`extension_grant`): applied at
once, for nothing, with a reason.

Locks: the pool's cluster rows first (like every allocator), then the reservation, then the
extension. The database allows one held extension per reservation, and on PostgreSQL the
exclusion constraint forbids two live allocations of a node overlapping.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.guards import require_active_organization, require_permission, require_verified_email
from accounts.models import User
from accounts.permissions import Permission
from core import audit
from core.errors import Conflict, ServiceError
from core.money import format_money

from . import limits, offerings, pricing, provisioning, selectors
from .extension_states import APPLIED, X, extension_transition
from .models import Allocation, Extension, Reservation
from .pools import pool_lock
from .windows import HOUR, Window

S = Reservation.State
EXTENDABLE = (S.SCHEDULED, S.ACTIVE)


class ExtensionUnavailable(Conflict):
    """The reservation's nodes are taken right after its end; `alternatives` says what is."""

    default_code = "capacity_unavailable"

    def __init__(self, message: str, *, alternatives: list[Any] | None = None) -> None:
        super().__init__(message)
        self.alternatives = alternatives or []


@dataclass(frozen=True)
class ExtensionQuote:
    hours: int
    starts_at: datetime
    ends_at: datetime
    quote: pricing.Quote
    available: bool

    @property
    def price(self) -> Decimal:
        return self.quote.total

    @property
    def currency(self) -> str:
        return self.quote.currency


def validate_hours(reservation: Reservation, hours: object) -> int:
    """A whole number of hours from 1 that keeps the block within CAPACITY_MAX_HOURS."""
    if not isinstance(hours, int) or isinstance(hours, bool) or hours < 1:
        raise ServiceError("Extend by a whole number of hours (at least 1).", param="hours")
    limit = settings.CAPACITY_MAX_HOURS
    if reservation.duration_hours + hours > limit:
        left = max(limit - reservation.duration_hours, 0)
        raise ServiceError(
            f"A reservation can last at most {limit} hours in all; this one can take {left} more.",
            param="hours",
        )
    return hours


def _require_extendable(reservation: Reservation, now: datetime) -> None:
    if reservation.state not in EXTENDABLE:
        raise Conflict(
            f"Only scheduled or active reservations can be extended; this one is "
            f"{reservation.get_state_display().lower()}.",
            code="not_extendable",
        )
    if reservation.ends_at <= now:
        # Its end has passed: the backend is letting the block go (Slurm purges an ended
        # reservation within seconds), so there is nothing left to extend.
        raise Conflict(
            f"{reservation.public_id} has already ended and can no longer be extended. "
            "You can reserve another block instead.",
            code="not_extendable",
        )


def _price(reservation: Reservation, hours: int) -> pricing.Quote:
    try:
        return pricing.quote(
            organization=reservation.organization,
            gpu_model=reservation.gpu_model,
            region=reservation.region,
            node_count=reservation.node_count,
            starts_at=reservation.ends_at,
            ends_at=reservation.ends_at + hours * HOUR,
        )
    except pricing.PriceUnavailable as exc:
        raise Conflict(str(exc), code="price_unavailable") from None


def extension_quote(*, reservation: Reservation, hours: object) -> ExtensionQuote:
    """What `hours` more would cost and whether the nodes are free for them. Reads only."""
    hours = validate_hours(reservation, hours)
    _require_extendable(reservation, timezone.now())
    pending = reservation.extensions.filter(state=X.HELD).first()
    end = reservation.ends_at + hours * HOUR
    busy = selectors.extension_blockers(reservation, reservation.ends_at, end, pending)
    return ExtensionQuote(
        hours=hours,
        starts_at=reservation.ends_at,
        ends_at=end,
        quote=_price(reservation, hours),
        available=pending is None and not busy.exists(),
    )


def _unavailable(reservation: Reservation, hours: int) -> ExtensionUnavailable:
    window = Window(reservation.ends_at, reservation.ends_at + hours * HOUR)
    return ExtensionUnavailable(
        "Your nodes are booked right after this reservation ends, so it cannot be extended. "
        "You can reserve another block for the extra time instead.",
        alternatives=offerings.search(
            organization=reservation.organization,
            gpu_model=reservation.gpu_model,
            region=reservation.region,
            node_count=reservation.node_count,
            window=window,
        ),
    )


class _Busy(Exception):
    pass


def extension_hold(
    *,
    reservation: Reservation,
    actor: User,
    hours: object,
    staff: bool = False,
    request_token: str = "",
) -> Extension:
    """Hold `hours` more on the reservation's nodes while the customer pays; nothing about the
    reservation changes until `extension_apply`. Customers need the reservations permission,
    a verified e-mail and an active organization; staff callers (`staff=True`) checked their
    own permission. Raises ExtensionUnavailable when the nodes are taken. A repeated
    `request_token` returns the extension it made."""
    if not staff:
        organization = reservation.organization
        require_permission(
            actor=actor, organization=organization, permission=Permission.MANAGE_RESERVATIONS
        )
        require_verified_email(actor)
        require_active_organization(organization)
    checked = validate_hours(reservation, hours)
    if len(request_token) > 64:
        raise ServiceError("Send a client token of at most 64 characters.", param="client_token")
    try:
        return _hold_locked(
            reservation=reservation,
            actor=actor,
            hours=checked,
            request_token=request_token,
            limited=not staff,
        )
    except _Busy:
        reservation.refresh_from_db()
        raise _unavailable(reservation, checked) from None


def _locked_reservation(reservation: Reservation) -> Reservation:
    pool_lock(selectors.pool_clusters(reservation.gpu_model, reservation.region))
    return (
        Reservation.objects.select_for_update(of=("self",))
        .select_related("gpu_model", "region", "organization")
        .get(pk=reservation.pk)
    )


def _expire_lapsed(reservation: Reservation, now: datetime) -> None:
    for lapsed in selectors.lapsed_extension_holds(now).filter(reservation=reservation):
        extension_transition(
            extension=lapsed, to=X.LAPSED, actor=None, reason="The payment hold lapsed."
        )


@transaction.atomic
def _hold_locked(
    *, reservation: Reservation, actor: User, hours: int, request_token: str, limited: bool
) -> Extension:
    # The organization first (its hold limits count this hold with the others; locks are
    # always taken organization, then pool, then reservation).
    organization = limits.organization_hold_lock(reservation.organization)
    locked = _locked_reservation(reservation)
    if request_token:  # the same request, a moment ago
        existing = locked.extensions.filter(request_token=request_token).first()
        if existing is not None:
            return existing
    now = timezone.now()
    _require_extendable(locked, now)
    validate_hours(locked, hours)
    _expire_lapsed(locked, now)
    pending = locked.extensions.filter(state=X.HELD).first()
    if pending is not None:
        raise Conflict(
            f"Extension {pending.public_id} of {pending.hours} h is waiting for payment. "
            "Pay for it or let it lapse before asking for more hours.",
            code="extension_pending",
        )
    end = locked.ends_at + hours * HOUR
    if selectors.extension_blockers(locked, locked.ends_at, end).exists():
        raise _Busy
    if limited:  # staff who hold hours for a customer are not held to the limits
        limits.hold_rate_check(organization)
        limits.hold_limits_check(
            organization=organization, now=now, holds=1, node_hours=hours * locked.node_count,
            nodes=0,
        )  # fmt: skip
    quote = _price(locked, hours)
    extension = Extension(
        reservation=locked,
        hours=hours,
        starts_at=locked.ends_at,
        ends_at=end,
        state=X.HELD,
        hold_expires_at=now + settings.CAPACITY_HOLD,
        currency=quote.currency,
        subtotal=quote.subtotal,
        discount=quote.discount,
        price=quote.total,
        price_lines=quote.lines_json(),
        requested_by=actor,
        request_token=request_token,
    )
    extension.full_clean(exclude=["reservation", "requested_by"], validate_constraints=False)
    try:
        with transaction.atomic():
            extension.save()
    except IntegrityError:  # another request held one a moment ago
        raise Conflict(
            "Another extension of this reservation is waiting for payment.",
            code="extension_pending",
        ) from None
    Allocation.objects.bulk_create(
        Allocation(
            reservation=locked,
            extension=extension,
            node_id=node_id,
            cluster_id=locked.cluster_id,
            starts_at=extension.starts_at,
            ends_at=extension.ends_at,
        )
        for node_id in selectors.reservation_live_node_ids(locked)
    )
    audit.record(
        action="extension.held",
        actor=actor,
        organization=locked.organization,
        target=locked,
        data={
            "extension": extension.public_id,
            "hours": hours,
            "amount": str(extension.price),
            "currency": extension.currency,
            "hold_expires_at": extension.hold_expires_at.isoformat()
            if extension.hold_expires_at
            else None,
        },
    )
    return extension


def _grow(locked: Reservation, extension: Extension, *, charged: bool) -> None:
    """Move the end and (for money received) the price; the reservation is locked."""
    Allocation.objects.filter(
        reservation=locked, released_at__isnull=True, extension__isnull=True
    ).update(ends_at=extension.ends_at)
    old_end = locked.ends_at
    locked.ends_at = extension.ends_at
    label = f"Extension by {extension.hours} h"
    if charged:
        locked.subtotal += extension.subtotal
        locked.discount += extension.discount
        locked.total += extension.price
        lines = [
            {"description": f"{label}: {line['description']}", "amount": line["amount"]}
            for line in extension.price_lines
        ]
    else:
        lines = [{"description": f"{label} (complimentary)", "amount": "0.00"}]
    locked.price_lines = [*locked.price_lines, *lines]
    locked.save(
        update_fields=["ends_at", "subtotal", "discount", "total", "price_lines", "updated_at"]
    )
    audit.record(
        action="reservation.extended",
        actor=extension.requested_by,
        organization=locked.organization,
        target=locked,
        data={
            "extension": extension.public_id,
            "hours": extension.hours,
            "from": old_end.isoformat(),
            "to": extension.ends_at.isoformat(),
            "amount": str(extension.price if charged else Decimal("0.00")),
            "currency": extension.currency,
            **({} if charged else {"complimentary": True}),
        },
    )
    provisioning.block_sync_after_commit(locked)  # a running block's backend must end later too


class LateExtensionRefused(Conflict):
    """A payment arrived after the extension's hold lapsed and its hours cost more now (or are
    no longer sold): it cannot buy them. The caller refunds it."""

    default_code = "late_payment_refused"


def extension_apply(*, extension: Extension, reason: str) -> Extension:
    """The money for an extension is secured (an invoice issued): move the reservation's end
    and add the price. See `extension_confirm_paid` for the rules; a lapsed one is applied at
    its quoted price when its hours are still free."""
    return _apply(extension, reason, paid=None)[0]


def extension_confirm_paid(
    *, extension: Extension, reason: str, paid: Decimal
) -> tuple[Extension, Decimal]:
    """A card payment of `paid` for an extension succeeded: apply it, returning it and what was
    paid beyond its price (to refund).

    Idempotent: an extension already applied is returned unchanged. One that lapsed is applied
    when its hours are still free on the reservation's nodes (else ExtensionUnavailable) and
    its hours cost no more now than was paid (else LateExtensionRefused), as a lapsed hold is;
    what was paid beyond today's price is the overpayment. A canceled extension, or a
    reservation that ended or whose end moved meanwhile, raises Conflict. The caller refunds
    the payment whenever this raises."""
    return _apply(extension, reason, paid=paid)


def _price_now(locked: Reservation, extension: Extension, paid: Decimal) -> Decimal:
    """What a late payment of `paid` bought too much: today's price for the lapsed hours
    must be at most what was paid, in the same currency."""
    try:
        current = _price(locked, extension.hours)
    except Conflict:
        raise LateExtensionRefused(
            f"The hold on extension {extension.public_id} lapsed before the payment arrived, "
            f"and {locked.gpu_model.name} is no longer sold in {locked.region.name}."
        ) from None
    if current.currency != extension.currency or current.total > paid:
        raise LateExtensionRefused(
            f"The hold on extension {extension.public_id} lapsed before the payment arrived, "
            f"and its {extension.hours} h now cost {format_money(current.total, current.currency)}"
            ", more than was paid."
        )
    return paid - current.total


@transaction.atomic
def _apply(extension: Extension, reason: str, *, paid: Decimal | None) -> tuple[Extension, Decimal]:
    locked = _locked_reservation(extension.reservation)
    current = Extension.objects.select_for_update(of=("self",)).get(pk=extension.pk)
    if current.state in APPLIED:
        return current, Decimal("0.00")
    if current.state == X.CANCELED:
        raise Conflict(
            f"Extension {current.public_id} was canceled: {locked.public_id} is "
            f"{locked.get_state_display().lower()}.",
            code="extension_canceled",
        )
    _require_extendable(locked, timezone.now())
    if locked.ends_at != current.starts_at:
        raise Conflict(
            f"{locked.public_id} no longer ends when extension {current.public_id} starts.",
            code="extension_stale",
        )
    if selectors.extension_blockers(locked, current.starts_at, current.ends_at, current).exists():
        raise ExtensionUnavailable(
            f"The hold on extension {current.public_id} lapsed and its hours have been taken."
        )
    late = current.state == X.LAPSED
    overpaid = Decimal("0.00")
    data: dict[str, Any] = {"late": late}
    if late and paid is not None:
        overpaid = _price_now(locked, current, paid)
        data.update(price_now=str(paid - overpaid), overpaid=str(overpaid))
    applied = extension_transition(
        extension=current, to=X.PAID, actor=None, reason=reason, data=data
    )
    # Like a lapsed block sold again cheaper: the price paid stays the sale, and billing
    # refunds the overpayment against it (a credit), so the books keep charge = price.
    _grow(locked, applied, charged=True)
    return applied, overpaid


def extension_cancel(*, extension: Extension, actor: User | None, reason: str) -> Extension:
    """Give up a held extension (its payment failed for good, or the customer let it go)."""
    return extension_transition(extension=extension, to=X.CANCELED, actor=actor, reason=reason)


@transaction.atomic
def extension_grant(
    *, reservation: Reservation, actor: Any, hours: object, reason: str
) -> Extension:
    """Staff give `hours` more for nothing: applied at once, the extension keeping its list
    value and the reason. The caller checks the staff permissions (and the complimentary
    limit) and records its own event with the reason."""
    checked = validate_hours(reservation, hours)
    locked = _locked_reservation(reservation)
    now = timezone.now()
    _require_extendable(locked, now)
    _expire_lapsed(locked, now)
    if locked.extensions.filter(state=X.HELD).exists():
        raise Conflict(
            "An extension of this reservation is waiting for payment; wait for it to be paid "
            "or lapse first.",
            code="extension_pending",
        )
    end = locked.ends_at + checked * HOUR
    if selectors.extension_blockers(locked, locked.ends_at, end).exists():
        raise _unavailable(locked, checked)
    quote = _price(locked, checked)
    extension = Extension.objects.create(
        reservation=locked,
        hours=checked,
        starts_at=locked.ends_at,
        ends_at=end,
        state=X.COMPLIMENTARY,
        currency=quote.currency,
        subtotal=quote.subtotal,
        discount=quote.discount,
        price=quote.total,
        price_lines=quote.lines_json(),
        requested_by=actor,
        reason=reason,
        applied_at=now,
    )
    _grow(locked, extension, charged=False)
    return extension


def lapsed_extensions_expire(
    now: datetime | None = None, cluster_ids: list[int] | None = None
) -> int:
    """Lapse every extension hold past its time and free its hours. Safe to run twice."""
    now = now or timezone.now()
    lapsed = 0
    for extension in selectors.lapsed_extension_holds(now, cluster_ids):
        try:
            extension_transition(
                extension=extension, to=X.LAPSED, actor=None, reason="The payment hold lapsed."
            )
        except Conflict:  # paid or canceled meanwhile
            continue
        lapsed += 1
    return lapsed
