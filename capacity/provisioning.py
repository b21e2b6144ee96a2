"""The reservation lifecycle after payment: start, provision, end, reconcile (reminders are in
`reminders`).

Every function is safe to run twice: each step is a legal transition under the row lock, the
driver is idempotent per key, and periodic sweeps pick up whatever a lost message, a killed
worker or a broker outage left behind (a scheduled reservation past its start is started by
`reservation_start_due` whether or not its task ever arrived).
"""

import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import audit, crypto
from core.tasks import enqueue_after_commit

from . import incidents, lifecycle, selectors
from .drivers import Access, MissingBlockError, get_driver
from .incidents import incident_open
from .models import Allocation, Incident, Node, Reservation
from .pools import pool_lock

logger = logging.getLogger(__name__)
S = Reservation.State


def _enqueue_after_commit(task: str, reservation_id: int) -> None:
    enqueue_after_commit(task, reservation_id=reservation_id)


def _nodes(reservation: Reservation) -> list[str]:
    return list(
        Allocation.objects.filter(
            reservation=reservation, released_at__isnull=True, extension__isnull=True
        )
        .order_by("node__hostname")
        .values_list("node__hostname", flat=True)
    )


# --- Start -------------------------------------------------------------------------------------
def reservation_start(reservation: Reservation) -> bool:
    """Move a scheduled reservation to provisioning and enqueue the work after commit."""
    try:
        lifecycle.reservation_transition(
            reservation=reservation,
            to=S.PROVISIONING,
            actor=None,
            reason="Starting: provisioning the nodes.",
        )
    except lifecycle.IllegalTransition:
        return False
    _enqueue_after_commit("capacity.provision", reservation.pk)
    return True


def reservation_start_due(now: datetime | None = None) -> int:
    """Start every scheduled reservation whose start is within the lead time (or past)."""
    now = now or timezone.now()
    due = Reservation.objects.filter(
        state=S.SCHEDULED, starts_at__lte=now + settings.PROVISIONING_LEAD
    ).order_by("starts_at")
    return sum(reservation_start(reservation) for reservation in due)


# --- Provision ----------------------------------------------------------------------------------
def block_provision(reservation_id: int) -> str:
    """Bring the nodes up. Raises the driver's TransientDriverError for the task to retry."""
    reservation = Reservation.objects.select_related("organization").get(pk=reservation_id)
    if reservation.state in (S.CANCELED, S.FAILED):
        # Ended while this message waited: an earlier attempt may have made it in the backend.
        _deprovision(reservation)
        return reservation.state
    if reservation.state != S.PROVISIONING:
        return reservation.state
    nodes = _nodes(reservation)
    access = get_driver().provision(
        key=f"provision:{reservation.public_id}",
        account=reservation.organization.slug,
        nodes=nodes,
        starts_at=reservation.starts_at,
        ends_at=reservation.ends_at,
    )
    with transaction.atomic():
        locked = Reservation.objects.select_for_update().get(pk=reservation_id)
        if locked.state != S.PROVISIONING:
            # Canceled while the nodes came up: take them down again.
            transaction.on_commit(lambda: _deprovision(locked))
            return locked.state
        if _nodes(locked) != nodes or locked.ends_at != reservation.ends_at:
            # A node was swapped (or the end moved) while the driver worked: catch up.
            _enqueue_after_commit("capacity.sync_block", locked.pk)
        lifecycle.reservation_transition(
            reservation=locked,
            to=S.ACTIVE,
            actor=None,
            reason="The nodes are up.",
            fields={
                "access_details": _public_access(access),
                "access_secret": crypto.encrypt(access.secret),
            },
        )
        incidents.late_start_credit_request(reservation=locked, now=timezone.now())
    return S.ACTIVE


def _public_access(access: Access) -> dict:
    return {
        "nodes": [vars(node) for node in access.nodes],
        "instructions": access.instructions,
    }


def provisioning_deadline_passed(reservation_id: int, now: datetime | None = None) -> bool:
    """Retrying a block's provisioning is over once its start plus the grace has passed."""
    reservation = Reservation.objects.get(pk=reservation_id)
    now = now or timezone.now()
    return now >= reservation.starts_at + settings.PROVISIONING_GIVE_UP_AFTER_START


def provisioning_delay_report(reservation_id: int, reason: str) -> None:
    """Provisioning keeps failing for a reason worth retrying: tell operations, once per block
    (an open incident for it is enough)."""
    reservation = Reservation.objects.get(pk=reservation_id)
    _, opened = incident_open(
        kind=Incident.Kind.PROVISIONING_DELAYED,
        reservation=reservation,
        detail=f"{reservation.public_id}: provisioning is being retried: {reason}",
    )
    if opened:
        logger.warning("provisioning %s delayed: %s", reservation.public_id, reason)


def provisioning_fail(reservation_id: int, reason: str) -> None:
    """Give up: fail the reservation (freeing its nodes), refund it, tell everyone."""
    reservation = Reservation.objects.get(pk=reservation_id)
    try:
        failed = lifecycle.reservation_transition(
            reservation=reservation,
            to=S.FAILED,
            actor=None,
            reason=f"Provisioning failed: {reason}",
            after_commit=lambda: _deprovision(reservation),
        )
    except lifecycle.IllegalTransition:
        return
    incident_open(kind=Incident.Kind.PROVISIONING_FAILED, reservation=failed, detail=reason)
    logger.error("provisioning %s failed: %s", failed.public_id, reason)


def _deprovision(reservation: Reservation) -> None:
    """Have the teardown task take a canceled or failed block down (after commit; retried
    until the backend has let it go)."""
    _enqueue_after_commit("capacity.deprovision", reservation.pk)


def block_teardown(reservation_id: int) -> str:
    """Take a finished block out of the backend. Idempotent (the same key every time); a block
    not finished is left alone. Raises the driver's errors for the task to handle."""
    reservation = Reservation.objects.get(pk=reservation_id)
    if reservation.state not in lifecycle.FINAL:
        return reservation.state
    get_driver().deprovision(
        key=f"deprovision:{reservation.public_id}",
        nodes=sorted({a.node.hostname for a in reservation.allocations.select_related("node")}),
    )
    return "torn down"


@transaction.atomic
def block_teardown_failure_report(reservation_id: int, reason: str) -> None:
    """Tell operations the backend kept a block: once while the incident is open, however
    often the teardown is retried."""
    reservation = Reservation.objects.select_for_update().get(pk=reservation_id)
    logger.error("tearing down %s failed: %s", reservation.public_id, reason)
    incident_open(
        kind=Incident.Kind.TEARDOWN_FAILED,
        reservation=reservation,
        detail=f"{reservation.public_id}: the backend did not let the block go: {reason}",
    )


# --- Changes to a running block --------------------------------------------------------------
def block_sync_after_commit(reservation: Reservation) -> None:
    """An active block's end moved or one of its nodes was swapped: once committed, have the
    driver make the running block match (the Slurm reservation's end and nodes)."""
    if reservation.state == S.ACTIVE:
        _enqueue_after_commit("capacity.sync_block", reservation.pk)


def block_sync(reservation_id: int) -> str:
    """Tell the driver an active block's current nodes and end. Idempotent: a block that
    already matches is left alone. Raises the driver's errors for the task to handle."""
    reservation = Reservation.objects.select_related("organization").get(pk=reservation_id)
    if reservation.state != S.ACTIVE:
        return reservation.state
    driver = get_driver()
    nodes = _nodes(reservation)
    key = f"provision:{reservation.public_id}"
    account, starts_at, ends_at = (
        reservation.organization.slug,
        reservation.starts_at,
        reservation.ends_at,
    )
    result = "synced"
    access: Access | None
    try:
        driver.extend(key=f"extend:{reservation.public_id}", nodes=nodes, ends_at=ends_at)
    except MissingBlockError:
        # Gone from the backend (purged, deleted behind our back) while it is still ours.
        access = driver.provision(
            key=key, account=account, nodes=nodes, starts_at=starts_at, ends_at=ends_at
        )
        result = "recreated"
    else:
        describe = getattr(driver, "describe", None)
        access = (
            describe(key=key, account=account, nodes=nodes, starts_at=starts_at, ends_at=ends_at)
            if describe
            else None
        )
    if access is not None:
        details = _public_access(access)
        with transaction.atomic():
            locked = Reservation.objects.select_for_update().get(pk=reservation_id)
            if locked.state == S.ACTIVE and locked.access_details != details:
                locked.access_details = details
                locked.save(update_fields=["access_details", "updated_at"])
    return result


def block_sync_failure_report(reservation_id: int, reason: str) -> None:
    """The backend refused the change: operations must reconcile it by hand. Nothing for a
    block no longer active, and one open incident per block, however often it repeats."""
    reservation = Reservation.objects.get(pk=reservation_id)
    if reservation.state != S.ACTIVE:
        return
    _, opened = incident_open(
        kind=Incident.Kind.SYNC_FAILED,
        reservation=reservation,
        detail=f"{reservation.public_id}: the backend did not take its new end or nodes: {reason}",
    )
    if opened:
        logger.error("syncing %s failed: %s", reservation.public_id, reason)


# --- End -----------------------------------------------------------------------------------------
def reservation_end_due(now: datetime | None = None) -> int:
    now = now or timezone.now()
    due = Reservation.objects.filter(
        state=S.ACTIVE, ends_at__lte=now + settings.PROVISIONING_CLEANUP_BUFFER
    )
    ended = 0
    for reservation in due:
        try:
            lifecycle.reservation_transition(
                reservation=reservation,
                to=S.RELEASING,
                actor=None,
                reason="The block ended: releasing the nodes.",
            )
        except lifecycle.IllegalTransition:
            continue
        _enqueue_after_commit("capacity.release", reservation.pk)
        ended += 1
    return ended


def block_release(reservation_id: int) -> str:
    reservation = Reservation.objects.get(pk=reservation_id)
    if reservation.state != S.RELEASING:
        return reservation.state
    get_driver().deprovision(key=f"deprovision:{reservation.public_id}", nodes=_nodes(reservation))
    try:
        lifecycle.reservation_transition(
            reservation=reservation, to=S.COMPLETED, actor=None, reason="Released."
        )
    except lifecycle.IllegalTransition:
        return Reservation.objects.get(pk=reservation_id).state
    incidents.degraded_credits_request(reservation=reservation)
    return S.COMPLETED


# --- Reconcile ------------------------------------------------------------------------------------
def provisioning_reconcile(now: datetime | None = None) -> dict[str, int]:
    """Retry reservations stuck in a transition; take unhealthy nodes out and heal blocks."""
    now = now or timezone.now()
    stuck_before = now - settings.PROVISIONING_STUCK_AFTER
    retried = 0
    for state, task in ((S.PROVISIONING, "capacity.provision"), (S.RELEASING, "capacity.release")):
        for reservation in Reservation.objects.filter(state=state, updated_at__lt=stuck_before):
            _enqueue_after_commit(task, reservation.pk)  # at once: no transaction here
            Reservation.objects.filter(pk=reservation.pk).update(updated_at=now)  # once per period
            retried += 1
    return {"retried": retried, **_check_health(), "leftovers": _tear_down_leftovers()}


def _tear_down_leftovers() -> int:
    """Blocks the backend still holds although ours have finished (a teardown lost, say):
    have the teardown task take them down. Drivers without `blocks()` have nothing to list."""
    blocks = getattr(get_driver(), "blocks", None)
    if blocks is None:
        return 0
    names = blocks()
    if not names:
        return 0
    finished = Reservation.objects.filter(public_id__in=names, state__in=lifecycle.FINAL)
    count = 0
    for pk in finished.order_by("pk").values_list("pk", flat=True):
        _enqueue_after_commit("capacity.deprovision", pk)
        count += 1
    return count


def _check_health() -> dict[str, int]:
    nodes = {n.hostname: n for n in Node.objects.filter(status=Node.Status.AVAILABLE)}
    if not nodes:
        return {"unhealthy": 0, "healed": 0}
    report = get_driver().health(nodes=sorted(nodes))
    unhealthy = healed = 0
    for hostname, state in sorted(report.items()):
        if state == "ok":
            continue
        unhealthy += 1
        healed += _take_out(nodes[hostname], state)
    return {"unhealthy": unhealthy, "healed": healed}


@transaction.atomic
def _take_out(node: Node, reason: str) -> int:
    """Put a node in maintenance; swap it out of live blocks where the cluster has a spare.

    Takes the pool lock first, like every allocator, so a spare cannot be booked meanwhile."""
    pool_lock(selectors.pool_of(node.cluster))
    node = Node.objects.select_for_update().select_related("cluster").get(pk=node.pk)
    if node.status != Node.Status.AVAILABLE:  # drained by staff meanwhile
        return 0
    node.status = Node.Status.MAINTENANCE
    node.status_reason = reason[:200]
    node.save(update_fields=["status", "status_reason"])
    incident_open(kind=Incident.Kind.NODE_UNHEALTHY, node=node, detail=reason)
    audit.record(action="node.maintenance", actor=None, target=node, reason=reason)
    healed = 0
    now = timezone.now()
    # Every live block: one being paid for (held) or coming up (provisioning) as well, whose
    # provision notices the swap and catches up (see `block_provision`); a node in maintenance is
    # never looked at again, so a block left on it would start on a dead node.
    for move in selectors.plan_moves(node, now):
        reservation = move.allocation.reservation
        if move.spare_id is None:
            incident_open(
                kind=Incident.Kind.NODE_UNHEALTHY,
                node=node,
                reservation=reservation,
                detail=(
                    f"{node.hostname} failed under {reservation.public_id}; "
                    f"no spare in {node.cluster.code}."
                ),
            )
            continue
        spare = allocation_move(move=move, now=now, actor=None, reason=reason)
        # A record of a swap done, resolved as it is written: nothing is opened.
        Incident.objects.create(
            kind=Incident.Kind.NODE_SWAPPED,
            node=node,
            reservation=reservation,
            detail=f"{node.hostname} replaced by {spare.hostname} in {reservation.public_id}.",
            resolved_at=now,
        )
        healed += 1
    return healed


def allocation_move(*, move: selectors.Move, now: datetime, actor: Any | None, reason: str) -> Node:
    """Give what is left of a live allocation to the move's spare node: the old row is released
    at `now`, a new one covers [move.starts_at, ends_at). Call in a transaction holding the
    pool lock, with a move planned under it (selectors.plan_moves)."""
    allocation = move.allocation
    reservation = allocation.reservation
    assert move.spare_id is not None, "a move without a spare strands its block"
    spare = Node.objects.get(pk=move.spare_id)
    Allocation.objects.filter(pk=allocation.pk).update(released_at=now)
    Allocation.objects.create(
        reservation=reservation,
        node=spare,
        cluster_id=allocation.cluster_id,
        starts_at=move.starts_at,
        ends_at=allocation.ends_at,
    )
    audit.record(
        action="reservation.node_swapped",
        actor=actor,
        organization=reservation.organization,
        target=reservation,
        data={"from": allocation.node.hostname, "to": spare.hostname},
        reason=reason,
    )
    block_sync_after_commit(reservation)
    return spare
