"""The extension state machine: every state change goes through `extension_transition`.

Shaped like capacity/lifecycle.py: a table of legal moves and one locked, audited function.
"""

from typing import Any

from django.db import transaction
from django.utils import timezone

from core import audit
from core.errors import Conflict
from core.hooks import hook

from .models import Allocation, Extension

X = Extension.State
LEGAL: dict[str, frozenset[str]] = {
    X.HELD: frozenset({X.PAID, X.LAPSED, X.CANCELED}),
    # A payment that arrives after the hold lapsed is applied when the hours are still free and
    # cost no more now than was paid.
    X.LAPSED: frozenset({X.PAID}),
}
# Entering one of these gives the held hours back (a paid extension hands them on to the
# reservation's own allocations first).
RELEASES_HOLD = frozenset({X.PAID, X.LAPSED, X.CANCELED})
APPLIED = frozenset({X.PAID, X.COMPLIMENTARY})


class IllegalExtensionTransition(Conflict):
    default_code = "illegal_transition"


def can_transition(state: str, to: str) -> bool:
    return to in LEGAL.get(state, frozenset())


@transaction.atomic
def extension_transition(
    *,
    extension: Extension,
    to: str,
    actor: Any | None,
    reason: str = "",
    data: dict | None = None,
) -> Extension:
    """Move an extension to `to` if that is legal from its current (locked) state.

    Locks the row, re-checks the state, writes the change, frees the hours it held when the
    hold ends, and records the audit event (on the reservation's timeline too)."""
    locked = (
        Extension.objects.select_for_update(of=("self",))
        .select_related("reservation__organization")
        .get(pk=extension.pk)
    )
    if not can_transition(locked.state, to):
        raise IllegalExtensionTransition(
            f"An extension that is {locked.get_state_display().lower()} cannot become "
            f"{X(to).label.lower()}.",
        )
    previous = locked.state
    now = timezone.now()
    locked.state = to
    if to != X.HELD:
        locked.hold_expires_at = None
    if to in APPLIED:
        locked.applied_at = now
    locked.save()
    if to in RELEASES_HOLD:
        Allocation.objects.filter(extension=locked, released_at__isnull=True).update(
            released_at=now
        )
    reservation = locked.reservation
    if to in (X.LAPSED, X.CANCELED):
        # Unpaid and no longer held: a payment still open for it must not go through.
        hook("EXTENSION_LAPSE_HOOK")(reservation.pk)
    audit.record(
        action="extension.transition",
        actor=actor,
        organization=reservation.organization,
        target=reservation,
        data={
            "extension": locked.public_id,
            "from": previous,
            "to": to,
            "hours": locked.hours,
            "amount": str(locked.price),
            "currency": locked.currency,
            **(data or {}),
        },
        reason=reason,
    )
    return locked


def held_extensions_cancel(*, reservation_id: int, actor: Any | None, reason: str) -> None:
    """The reservation ended (canceled, failed, completed, expired): a pending extension goes
    with it. A payment still arriving for it is refunded by billing."""
    for extension in Extension.objects.filter(reservation_id=reservation_id, state=X.HELD).order_by(
        "pk"
    ):
        extension_transition(extension=extension, to=X.CANCELED, actor=actor, reason=reason)
