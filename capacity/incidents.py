"""Incidents for operations: one open incident per kind and object (a reservation, a node or
both), however often the same trouble is reported."""

from datetime import datetime, timedelta
from typing import NamedTuple

from django.db import IntegrityError, transaction
from django.db.models import CharField, Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone

from core.hooks import hook
from core.models import AuditEvent

from .models import Allocation, Incident, Node, Reservation


def incident_open(
    *,
    kind: str,
    detail: str,
    reservation: Reservation | None = None,
    node: Node | None = None,
) -> tuple[Incident, bool]:
    """Open an incident of `kind` for the object, or return the one already open for it (its
    text left as first written). True when it was opened now. The database's constraint
    (one_open_incident_per_kind_and_object) settles a race between two reporters."""
    open_ = Incident.objects.filter(
        kind=kind, reservation=reservation, node=node, resolved_at__isnull=True
    )
    existing = open_.first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            return (
                Incident.objects.create(
                    kind=kind, reservation=reservation, node=node, detail=detail
                ),
                True,
            )
    except IntegrityError:
        existing = open_.first()
        if existing is None:
            raise
        return existing, False


# --- SLA credits -------------------------------------------------------------------------------
# Capacity measures the time a block fell short; billing (SLA_CREDIT_HOOK) prices it with the
# policy in settings and pays it back once per (reservation, cause, key). A measure is asked for
# only once the time lost is known, so the same trigger repeated measures the same minutes:
# - degraded: when the incident for the failed node under the block is resolved, or when the
#   block ends with it still open; the time is the failed node's share of the block while the
#   incident was open (its allocation's period, cut short where the block ended early);
# - late_start: when the nodes are up, from the start;
# - force_released: at the staff release, to the block's end.
DEGRADED = "degraded"
LATE_START = "late_start"
FORCE_RELEASED = "force_released"


def _minutes(start: datetime, end: datetime) -> int:
    return max(int((end - start).total_seconds() // 60), 0)


def sla_credit_request(*, reservation: Reservation, cause: str, key: str, minutes: int) -> None:
    """Ask billing to credit `minutes` lost (after the commit, in its task). Nothing for none."""
    if minutes > 0:
        hook("SLA_CREDIT_HOOK")(
            reservation_id=reservation.pk, cause=cause, key=key, minutes=minutes
        )


def degraded_minutes(incident: Incident, now: datetime | None = None) -> int:
    """How long the incident's failed node served its block while the incident was open."""
    if incident.reservation_id is None or incident.node_id is None:
        return 0
    allocation = (
        Allocation.objects.filter(
            reservation_id=incident.reservation_id,
            node_id=incident.node_id,
            extension__isnull=True,
        )
        .order_by("-starts_at")
        .first()
    )
    if allocation is None:
        return 0
    ends = [allocation.ends_at, incident.resolved_at or now or timezone.now()]
    if allocation.released_at is not None:
        ends.append(allocation.released_at)
    return _minutes(max(incident.created_at, allocation.starts_at), min(ends))


def degraded_credits_request(*, reservation: Reservation, incident: Incident | None = None) -> None:
    """Credit the failed nodes under a block: `incident` once it is resolved, or every one
    of the block's once the block has ended (their time is known then, open or not)."""
    incidents = (
        [incident]
        if incident is not None
        else Incident.objects.filter(
            kind=Incident.Kind.NODE_UNHEALTHY, reservation=reservation, node__isnull=False
        ).order_by("pk")
    )
    for each in incidents:
        if each.kind == Incident.Kind.NODE_UNHEALTHY and each.node_id is not None:
            sla_credit_request(
                reservation=reservation,
                cause=DEGRADED,
                key=f"incident:{each.pk}",
                minutes=degraded_minutes(each),
            )


def late_start_credit_request(*, reservation: Reservation, now: datetime) -> None:
    """The nodes came up at `now`: credit the time past the block's start."""
    sla_credit_request(
        reservation=reservation,
        cause=LATE_START,
        key="start",
        minutes=_minutes(reservation.starts_at, now),
    )


def force_release_credit_request(*, reservation: Reservation, now: datetime) -> None:
    """Staff ended the block at `now`: credit the time it had left."""
    sla_credit_request(
        reservation=reservation,
        cause=FORCE_RELEASED,
        key="release",
        minutes=_minutes(now, reservation.ends_at),
    )


# --- Measured again, from the records, once the block is over ------------------------------------
class Shortfall(NamedTuple):
    cause: str
    key: str
    minutes: int


def reservations_short(reservations: QuerySet[Reservation]) -> QuerySet[Reservation]:
    """Those of `reservations` with a record of falling short (a failed node under them, nodes
    up a minute or more past the start, a staff release): what `sla_shortfalls` may find
    something in, so a sweep over many blocks measures only these."""
    moves = AuditEvent.objects.filter(
        object_type=Reservation._meta.label_lower,
        object_id=Cast(OuterRef("pk"), CharField()),
        action="reservation.transition",
    )
    late = moves.filter(
        data__to=Reservation.State.ACTIVE,
        created_at__gte=OuterRef("starts_at") + timedelta(minutes=1),
    )
    forced = moves.filter(data__to=Reservation.State.RELEASING, data__forced=True)
    failed = Incident.objects.filter(
        kind=Incident.Kind.NODE_UNHEALTHY, reservation=OuterRef("pk"), node__isnull=False
    )
    return reservations.filter(Q(Exists(late)) | Q(Exists(forced)) | Q(Exists(failed)))


def sla_shortfalls(reservation: Reservation) -> list[Shortfall]:
    """What a finished block fell short by, measured from what was recorded as it ran (its
    transitions in the audit log, its incidents), the same measures the live triggers take:
    billing's sweep credits from this what a lost message never asked for. Empty for a block
    that is not over."""
    if reservation.state != Reservation.State.COMPLETED:
        return []
    found: list[Shortfall] = []
    moves = list(
        AuditEvent.objects.filter(
            object_type=Reservation._meta.label_lower,
            object_id=str(reservation.pk),
            action="reservation.transition",
        ).order_by("created_at", "pk")
    )
    up = next((m for m in moves if m.data.get("to") == Reservation.State.ACTIVE), None)
    if up is not None:
        found.append(Shortfall(LATE_START, "start", _minutes(reservation.starts_at, up.created_at)))
    released = next(
        (
            m
            for m in moves
            if m.data.get("to") == Reservation.State.RELEASING and m.data.get("forced")
        ),
        None,
    )
    if released is not None:
        found.append(
            Shortfall(FORCE_RELEASED, "release", _minutes(released.created_at, reservation.ends_at))
        )
    for incident in Incident.objects.filter(
        kind=Incident.Kind.NODE_UNHEALTHY, reservation=reservation, node__isnull=False
    ).order_by("pk"):
        found.append(Shortfall(DEGRADED, f"incident:{incident.pk}", degraded_minutes(incident)))
    return [shortfall for shortfall in found if shortfall.minutes > 0]
