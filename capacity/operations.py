"""Staff operations on inventory and reservations: what the back office's actions call.

The customer services check membership of the reservation's organization; these check the
staff permissions instead (``capacity.drain_node``, ``capacity.operate_reservation``,
``capacity.change_incident``) and otherwise reuse the same internals, so a staff cancellation,
extension or release takes the same locks and legal transitions as a customer's. Every function
records audit events with the staff actor and the reason given (required where a step cannot be
undone).

Draining a node moves each reservation it holds now or later (held, scheduled, provisioning or
active) to a free node of the same cluster for what is left of its period. When some reservation
has no spare the drain is refused and nothing changes, unless the operator asks to drain anyway:
then those reservations stay on the node in maintenance and each gets an open incident.
"""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from core import audit
from core.dates import format_datetime, format_span
from core.errors import Conflict, NotAllowed, ServiceError
from core.money import format_money
from core.staff import reason_clean, require_staff_permission
from core.tasks import enqueue_after_commit

from . import extensions, incidents, lifecycle, provisioning, selectors, services
from .incidents import incident_open
from .models import Incident, Node, Reservation
from .pools import pool_lock
from .windows import HOUR

S = Reservation.State
DRAIN = "capacity.drain_node"
OPERATE = "capacity.operate_reservation"
RESOLVE = "capacity.change_incident"


class DrainRefused(Conflict):
    default_code = "no_spare"


def _require(actor: Any, permission: str, what: str) -> None:
    if not (actor is not None and actor.is_active and actor.is_staff):
        raise NotAllowed(f"Only staff may {what}.")
    require_staff_permission(actor, permission, what)


def _reason(reason: str, *, required: bool = True) -> str:
    return reason_clean(reason, required=required)


def _window(reservation: Reservation) -> str:
    return format_span(reservation.starts_at, reservation.ends_at)


# --- Nodes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DrainPlan:
    """What draining a node would do: each commitment, and its spare or None."""

    node: Node
    moves: list[selectors.Move]
    spares: dict[int, str] = field(default_factory=dict)  # spare node id -> hostname

    @property
    def stranded(self) -> list[selectors.Move]:
        return [m for m in self.moves if m.spare_id is None]

    def spare_hostname(self, move: selectors.Move) -> str | None:
        return self.spares.get(move.spare_id) if move.spare_id is not None else None

    def refusal(self) -> str:
        names = ", ".join(
            f"{m.allocation.reservation.public_id} ({m.allocation.reservation.organization}, "
            f"{m.allocation.reservation.state}, {_window(m.allocation.reservation)})"
            for m in self.stranded
        )
        return (
            f"{self.node.hostname} was not drained: no free node of its cluster can take "
            f"{names}. Nothing was changed."
        )


def node_drain_plan(
    *,
    node: Node,
    avoid: tuple[int, ...] = (),
    now: datetime | None = None,
    claimed: list[tuple[int, datetime, datetime]] | None = None,
) -> DrainPlan:
    """Read-only: the moves a drain of `node` would make now (never onto a node in `avoid`).
    Previewing a batch, pass one `claimed` list to the plans of its nodes in drain order."""
    moves = selectors.plan_moves(node, now or timezone.now(), avoid=avoid, claimed=claimed)
    spare_ids = {m.spare_id for m in moves if m.spare_id is not None}
    spares = dict(Node.objects.filter(pk__in=spare_ids).values_list("pk", "hostname"))
    return DrainPlan(node=node, moves=moves, spares=spares)


@dataclass(frozen=True)
class DrainResult:
    node: Node
    swapped: list[tuple[str, str]]  # (reservation public id, spare hostname)
    flagged: list[str]  # public ids left on the node, each with an open incident


@transaction.atomic
def node_drain(
    *,
    node: Node,
    actor: Any,
    reason: str,
    flag_unswappable: bool = False,
    avoid: tuple[int, ...] = (),
) -> DrainResult:
    """Put an available node into maintenance and move its reservations to spares.

    Under the pool lock (so no allocator books a spare meanwhile) and the node's row lock.
    Refuses with DrainRefused, changing nothing, when a reservation has no spare, unless
    `flag_unswappable`: then it stays on the node and an incident is opened for it. `avoid` are
    nodes never to move onto (the other nodes of the same batch of drains).
    """
    _require(actor, DRAIN, "drain nodes")
    reason = _reason(reason)
    cluster = node.cluster
    pool_lock(selectors.pool_of(cluster))
    locked = Node.objects.select_for_update(of=("self",)).select_related("cluster").get(pk=node.pk)
    if locked.status != Node.Status.AVAILABLE:
        raise Conflict(
            f"{locked.hostname} is already {locked.get_status_display().lower()}.",
            code="not_available",
        )
    now = timezone.now()
    plan = node_drain_plan(node=locked, avoid=avoid, now=now)
    if plan.stranded and not flag_unswappable:
        raise DrainRefused(plan.refusal())
    locked.status = Node.Status.MAINTENANCE
    locked.status_reason = reason[:200]
    locked.save(update_fields=["status", "status_reason"])
    swapped: list[tuple[str, str]] = []
    flagged: list[str] = []
    for move in plan.moves:
        reservation = move.allocation.reservation
        if move.spare_id is None:
            incident_open(
                kind=Incident.Kind.NODE_UNHEALTHY,
                node=locked,
                reservation=reservation,
                detail=(
                    f"{locked.hostname} was drained into maintenance ({reason}) while "
                    f"{reservation.public_id} ({reservation.get_state_display().lower()}, "
                    f"{_window(reservation)}) holds it: no spare in {locked.cluster.code}."
                ),
            )
            audit.record(
                action="reservation.node_drained",
                actor=actor,
                organization=reservation.organization,
                target=reservation,
                data={"node": locked.hostname, "spare": None},
                reason=reason,
            )
            flagged.append(reservation.public_id)
            continue
        spare = provisioning.allocation_move(move=move, now=now, actor=actor, reason=reason)
        swapped.append((reservation.public_id, spare.hostname))
    audit.record(
        action="node.drained",
        actor=actor,
        target=locked,
        data={"swapped": dict(swapped), "flagged": flagged},
        reason=reason,
    )
    return DrainResult(node=locked, swapped=swapped, flagged=flagged)


@transaction.atomic
def node_restore(*, node: Node, actor: Any, reason: str = "") -> Node:
    """Bring a node in maintenance back into the pool (allocators may book it at once)."""
    _require(actor, DRAIN, "bring nodes back from maintenance")
    reason = _reason(reason, required=False)
    locked = Node.objects.select_for_update().get(pk=node.pk)
    if locked.status != Node.Status.MAINTENANCE:
        raise Conflict(
            f"{locked.hostname} is {locked.get_status_display().lower()}, not in maintenance.",
            code="not_in_maintenance",
        )
    previous = locked.status_reason
    locked.status = Node.Status.AVAILABLE
    locked.status_reason = ""
    locked.save(update_fields=["status", "status_reason"])
    audit.record(
        action="node.restored",
        actor=actor,
        target=locked,
        data={"maintenance_reason": previous},
        reason=reason,
    )
    return locked


# --- Reservations ------------------------------------------------------------------------------
class RefundBasis(models.TextChoices):
    POLICY = "policy", "What the cancellation policy gives back"
    FULL = "full", "Full refund"


CANCELABLE = (S.HELD, S.SCHEDULED, S.PROVISIONING)
PAID = (S.SCHEDULED, S.PROVISIONING)


def refund_calculate(
    reservation: Reservation, basis: str, now: datetime | None = None
) -> tuple[Decimal | None, int | None]:
    """(amount, percent) a staff cancellation gives back; (None, None) for an unpaid hold.
    Both bases are shares of the money settled (paid less refunds, invoiced less credits)."""
    if reservation.state not in PAID:
        return None, None
    if basis == RefundBasis.FULL:
        return services.settled_money(reservation), 100
    now = now or timezone.now()
    return services.refund_amount(reservation, now), services.refund_percent(reservation, now)


@transaction.atomic
def reservation_cancel(
    *, reservation: Reservation, actor: Any, reason: str, refund: str
) -> Reservation:
    """Cancel a held, scheduled or provisioning reservation on the customer's behalf.

    `refund` is "policy" (what the customer would get back canceling now) or "full" (all the
    money settled); a full refund above the policy also needs CANCELLATION_REFUND_PERMISSION
    (finance's refund permission). The amount becomes `refund_due` and billing is asked, after
    commit, to pay it back; nodes being provisioned are torn down after commit.
    """
    _require(actor, OPERATE, "cancel reservations")
    reason = _reason(reason)
    if refund not in RefundBasis.values:
        raise ServiceError("Choose the policy refund or a full refund.", param="refund")
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    if locked.state not in CANCELABLE:
        hint = " Release it instead." if locked.state == S.ACTIVE else ""
        raise Conflict(
            f"{locked.public_id} is {locked.get_state_display().lower()} and cannot be "
            f"canceled.{hint}",
            code="not_cancelable",
        )
    now = timezone.now()
    policy, policy_percent = refund_calculate(locked, RefundBasis.POLICY, now)
    amount, percent = (
        (policy, policy_percent)
        if refund == RefundBasis.POLICY
        else refund_calculate(locked, refund)
    )
    if amount is not None and policy is not None and amount > policy:
        require_staff_permission(
            actor,
            settings.CANCELLATION_REFUND_PERMISSION,
            "refund more than the cancellation policy gives back "
            f"({format_money(policy, locked.currency)} of {format_money(amount, locked.currency)})",
        )
    after_commit = None
    if locked.state == S.PROVISIONING:
        after_commit = lambda: provisioning._deprovision(locked)  # noqa: E731
    canceled = lifecycle.reservation_transition(
        reservation=locked,
        to=S.CANCELED,
        actor=actor,
        reason=reason,
        data={
            "refund_due": str(amount) if amount is not None else None,
            "refund_percent": percent,
            "refund_basis": refund if amount is not None else None,
        },
        fields={"refund_due": amount},
        after_commit=after_commit,
    )
    return canceled


def reservation_extend(
    *, reservation: Reservation, actor: Any, hours: int, reason: str
) -> Reservation:
    """Give a scheduled or active reservation `hours` more on its own nodes, for nothing (a
    complimentary extension, recorded with its list value and the reason). Above
    EXTENSION_COMPLIMENTARY_LIMIT it also needs finance's refund permission. A charged staff
    extension goes through billing (billing.services.extensions), like the customer's."""
    _require(actor, OPERATE, "extend reservations")
    reason = _reason(reason)
    value = extensions.extension_quote(reservation=reservation, hours=hours).price
    if value > settings.EXTENSION_COMPLIMENTARY_LIMIT:
        require_staff_permission(
            actor,
            settings.EXTENSION_COMPLIMENTARY_PERMISSION,
            f"grant complimentary hours worth more than {settings.EXTENSION_COMPLIMENTARY_LIMIT}",
        )
    try:
        extension = extensions.extension_grant(
            reservation=reservation, actor=actor, hours=hours, reason=reason
        )
    except extensions.ExtensionUnavailable:
        window = format_span(reservation.ends_at, reservation.ends_at + hours * HOUR)
        raise Conflict(
            f"{reservation.public_id} cannot be extended by {hours} h: another reservation "
            f"holds some of its nodes in {window}.",
            code="capacity_unavailable",
        ) from None
    extended = Reservation.objects.get(pk=extension.reservation_id)
    # The extension's own event has no reason field to carry; this one says why.
    audit.record(
        action="reservation.extended_by_staff",
        actor=actor,
        organization=extended.organization,
        target=extended,
        data={
            "hours": hours,
            "extension": extension.public_id,
            "complimentary": True,
            "value": str(extension.price),
            "currency": extension.currency,
        },
        reason=reason,
    )
    return extended


RETRY_TASKS = {S.PROVISIONING: "capacity.provision", S.RELEASING: "capacity.release"}


@transaction.atomic
def reservation_retry(*, reservation: Reservation, actor: Any, reason: str = "") -> str:
    """Enqueue again the task of a reservation stuck in provisioning or releasing (the driver
    is idempotent per reservation, so a task still running meanwhile does no harm). Returns
    the task name."""
    _require(actor, OPERATE, "retry provisioning")
    reason = _reason(reason, required=False)
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    task = RETRY_TASKS.get(S(locked.state))
    if task is None:
        raise Conflict(
            f"{locked.public_id} is {locked.get_state_display().lower()}: only reservations "
            "stuck in provisioning or releasing can be retried.",
            code="not_retryable",
        )
    # Touched, so the reconcile sweep does not send the same task again this period.
    Reservation.objects.filter(pk=locked.pk).update(updated_at=timezone.now())
    audit.record(
        action="reservation.retried",
        actor=actor,
        organization=locked.organization,
        target=locked,
        data={"state": locked.state, "task": task},
        reason=reason,
    )
    enqueue_after_commit(task, reservation_id=locked.pk)
    return task


@transaction.atomic
def reservation_release(*, reservation: Reservation, actor: Any, reason: str) -> Reservation:
    """End an active block now: releasing, then the release task tears it down and frees the
    nodes. No money moves; a refund for the unused time is finance's decision."""
    _require(actor, OPERATE, "release reservations")
    reason = _reason(reason)
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    if locked.state != S.ACTIVE:
        raise Conflict(
            f"{locked.public_id} is {locked.get_state_display().lower()}: only active "
            "reservations can be released.",
            code="not_releasable",
        )
    released = lifecycle.reservation_transition(
        reservation=locked,
        to=S.RELEASING,
        actor=actor,
        reason=reason,
        data={"forced": True},
    )
    incidents.force_release_credit_request(reservation=released, now=timezone.now())
    enqueue_after_commit("capacity.release", reservation_id=released.pk)
    return released


# --- Incidents ---------------------------------------------------------------------------------
@transaction.atomic
def incident_resolve(*, incident: Incident, actor: Any, note: str = "") -> Incident:
    _require(actor, RESOLVE, "resolve incidents")
    note = _reason(note, required=False)
    locked = (
        Incident.objects.select_for_update(of=("self",))
        .select_related("reservation")
        .get(pk=incident.pk)
    )
    if locked.resolved_at is not None:
        raise Conflict(
            f"{locked.pk} was already resolved on {format_datetime(locked.resolved_at)}.",
            code="already_resolved",
        )
    locked.resolved_at = timezone.now()
    locked.save(update_fields=["resolved_at"])
    audit.record(
        action="incident.resolved",
        actor=actor,
        organization=locked.reservation.organization if locked.reservation else None,
        target=locked,
        data={"kind": locked.kind},
        reason=note,
    )
    if locked.reservation is not None:
        incidents.degraded_credits_request(reservation=locked.reservation, incident=locked)
    return locked
