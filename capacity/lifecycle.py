"""The reservation state machine: every state change goes through `reservation_transition`."""

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from core import audit
from core.errors import Conflict
from core.hooks import hook

from . import notifications
from .extension_states import held_extensions_cancel
from .models import Allocation, Reservation

S = Reservation.State
LEGAL: dict[str, frozenset[str]] = {
    S.HELD: frozenset({S.SCHEDULED, S.EXPIRED, S.CANCELED}),
    # A payment that arrives after the hold lapsed: only `reservation_confirm`, which first
    # re-allocates nodes under the pool lock, takes this step.
    S.EXPIRED: frozenset({S.SCHEDULED}),
    S.SCHEDULED: frozenset({S.PROVISIONING, S.CANCELED}),
    S.PROVISIONING: frozenset({S.ACTIVE, S.FAILED, S.CANCELED}),
    S.ACTIVE: frozenset({S.RELEASING}),
    S.RELEASING: frozenset({S.COMPLETED, S.FAILED}),
}
# Entering one of these gives the nodes back.
RELEASES_NODES = frozenset({S.EXPIRED, S.CANCELED, S.FAILED, S.COMPLETED})
SETTLED = frozenset({S.HELD, S.SCHEDULED, S.ACTIVE, *RELEASES_NODES})
FINAL = frozenset({S.CANCELED, S.FAILED, S.COMPLETED})


class IllegalTransition(Conflict):
    default_code = "illegal_transition"


def moves_money(reservation: Reservation) -> bool:
    """Whether the state just entered asks billing to act: a refund for a cancellation with
    money due or a failure, an invoice for a block confirmed on invoice terms, and for a hold
    (or quote) that lapsed or was canceled, canceling the payments still open for it so
    nothing is payable."""
    if reservation.state in (S.FAILED, S.EXPIRED, S.CANCELED):
        return True
    return reservation.state == S.SCHEDULED and reservation.organization.on_invoice_terms


def can_transition(state: str, to: str) -> bool:
    return to in LEGAL.get(state, frozenset())


@transaction.atomic
def reservation_transition(
    *,
    reservation: Reservation,
    to: str,
    actor: Any | None,
    reason: str = "",
    data: dict | None = None,
    fields: dict[str, Any] | None = None,
    after_commit: Callable[[], None] | None = None,
    notify: bool = True,
) -> Reservation:
    """Move a reservation to `to` if that is legal from its current (locked) state.

    Locks the row, re-checks the state, writes the change, releases the nodes on a final state,
    records the audit event the reservation's timeline shows, asks billing to settle the money
    the new state calls for, and runs `after_commit` (for example enqueueing a task) only once
    the transaction has committed.
    """
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    if not can_transition(locked.state, to):
        raise IllegalTransition(
            f"A reservation that is {locked.get_state_display().lower()} cannot become "
            f"{S(to).label.lower()}.",
        )
    previous = locked.state
    locked.state = to
    for name, value in (fields or {}).items():
        setattr(locked, name, value)
    if to != S.HELD:
        locked.hold_expires_at = None
    locked.save()
    if to in RELEASES_NODES:
        held_extensions_cancel(
            reservation_id=locked.pk,
            actor=actor,
            reason=f"The reservation became {S(to).label.lower()}.",
        )
        Allocation.objects.filter(reservation=locked, released_at__isnull=True).update(
            released_at=timezone.now()
        )
    audit.record(
        action="reservation.transition",
        actor=actor,
        organization=locked.organization,
        target=locked,
        data={"from": previous, "to": to, **(data or {})},
        reason=reason,
    )
    if moves_money(locked):
        # The one place settlement is asked for: billing's hook enqueues it after the commit
        # (and its periodic sweep does the same, so a lost message only delays it).
        hook("RESERVATION_SETTLEMENT_HOOK")(locked.pk)
    if after_commit is not None:
        transaction.on_commit(after_commit)
    template = notifications.TEMPLATES.get(S(to))
    if notify and template is not None:
        notifications.notification_send(locked, template)
    return locked
