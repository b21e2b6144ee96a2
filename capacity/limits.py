"""What one organization may hold at once, and how fast it may place holds.

A hold keeps nodes from everyone else for CAPACITY_HOLD while nothing is paid, so a customer
could otherwise squat a region by holding and letting go. Three caps, by tier in
settings.CAPACITY_LIMITS and raised for one organization by sales (its `max_*` fields):

- open holds: reservations and extensions waiting for payment, counted together;
- their node-hours (nodes times hours held);
- nodes in live reservations (held, scheduled, provisioning, active), whatever they cost, like a
  cloud account's instance limit.

And a rate: at most CAPACITY_HOLD_RATE_PER_MINUTE new holds a minute per organization.

The checks run with the organization's row locked (organization_hold_lock), in the transaction that
writes the hold, so two concurrent holds cannot both take the last place. The rate counter is
a cache `add` then `incr`: atomic on its own with Redis and the local-memory cache, and made so
for the database cache (whose `incr` reads then writes) by the same row lock; there the count
is written in the hold's transaction, so a hold refused after it (sold out) is not counted,
while Redis and local memory count every attempt that got that far. Sales' quotes and
staff extensions are not held to the caps: the people who set the limits made them.
"""

import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Sum

from accounts.models import Organization, User
from accounts.services.organizations import organization_lock
from core import audit
from core.errors import Conflict, ServiceError
from core.ratelimit import RateLimited
from core.staff import reason_clean, require_staff_permission

from .models import Extension, Reservation

S = Reservation.State
LIVE = (S.HELD, S.SCHEDULED, S.PROVISIONING, S.ACTIVE)
RAISE = "ask your account manager (sales) to raise it"
# The override field on Organization for each limit, and how the limit reads (plural, one).
OVERRIDES = {
    "open_holds": ("max_open_holds", "open holds"),
    "held_node_hours": ("max_held_node_hours", "node-hours on hold"),
    "live_nodes": ("max_live_nodes", "nodes in live reservations"),
}
ONE = {
    "open_holds": "open hold",
    "held_node_hours": "node-hour on hold",
    "live_nodes": "node in live reservations",
}
OVERRIDE_FIELDS = tuple(field for field, _ in OVERRIDES.values())


class HoldLimitExceeded(Conflict):
    """A hold would take the organization past one of its limits; `code` names which."""

    default_code = "hold_limit_exceeded"


class HoldRateLimited(RateLimited):
    """Too many holds this minute; `retry_after` says in how many seconds the next is taken
    (the API answers 429 with Retry-After, as for any rate limit)."""

    default_code = "hold_rate_limited"


@dataclass(frozen=True)
class Limits:
    open_holds: int | None
    held_node_hours: int | None
    live_nodes: int | None


def organization_hold_lock(organization: Organization) -> Organization:
    """The organization's row, locked for the transaction that writes a hold: holds of one
    organization take turns, and wait for a change of its terms (see organization_lock)."""
    return organization_lock(organization)


def organization_limits(organization: Organization) -> Limits:
    """The organization's limits: its own where sales set one, else its tier's (None: none)."""
    tier = settings.CAPACITY_LIMITS.get(organization.tier, {})
    values: dict[str, int | None] = {}
    for name, (field, _) in OVERRIDES.items():
        own = getattr(organization, field)
        values[name] = own if own is not None else tier.get(name)
    return Limits(**values)


def _refuse(organization: Organization, name: str, limit: int, detail: str) -> HoldLimitExceeded:
    label = ONE[name] if limit == 1 else OVERRIDES[name][1]
    source = (
        "its own"
        if getattr(organization, OVERRIDES[name][0]) is not None
        else (f"the {organization.get_tier_display()} tier's")
    )
    return HoldLimitExceeded(
        f"{organization.name} may have at most {limit} {label} ({source} limit); {detail} "
        f"To go beyond, {RAISE}.",
        code=f"{name}_limit",
    )


def hold_limits_check(
    *,
    organization: Organization,
    now: datetime,
    holds: int,
    node_hours: int,
    nodes: int,
) -> None:
    """Refuse a new hold of `holds` (0 or 1) holds, `node_hours` held and `nodes` more live
    nodes past the organization's limits. Call with `organization` locked, in the transaction
    that writes the hold."""
    limits = organization_limits(organization)
    if holds and (limits.open_holds is not None or limits.held_node_hours is not None):
        held = list(
            Reservation.objects.filter(
                organization=organization,
                state=S.HELD,
                hold_expires_at__gt=now,
                quoted_by__isnull=True,
            ).values_list("node_count", "starts_at", "ends_at")
        )
        extending = list(
            Extension.objects.filter(
                reservation__organization=organization,
                state=Extension.State.HELD,
                hold_expires_at__gt=now,
            ).values_list("hours", "reservation__node_count")
        )
        count = len(held) + len(extending)
        if limits.open_holds is not None and count + holds > limits.open_holds:
            raise _refuse(
                organization,
                "open_holds",
                limits.open_holds,
                f"it has {count} waiting for payment. Pay for one or let it lapse first.",
            )
        in_holds = sum(n * int((end - start).total_seconds() // 3600) for n, start, end in held)
        in_holds += sum(hours * n for hours, n in extending)
        if limits.held_node_hours is not None and in_holds + node_hours > limits.held_node_hours:
            raise _refuse(
                organization,
                "held_node_hours",
                limits.held_node_hours,
                f"{in_holds} are held now and this would hold {node_hours} more.",
            )
    if nodes and limits.live_nodes is not None:
        live = (
            Reservation.objects.filter(organization=organization, state__in=LIVE)
            .exclude(state=S.HELD, hold_expires_at__lte=now)
            .aggregate(n=Sum("node_count"))["n"]
            or 0
        )
        if live + nodes > limits.live_nodes:
            raise _refuse(
                organization,
                "live_nodes",
                limits.live_nodes,
                f"it has {live} and this would add {nodes}.",
            )


def hold_rate_check(organization: Organization) -> None:
    """Count a new hold against CAPACITY_HOLD_RATE_PER_MINUTE (a fixed window per clock minute)
    or raise HoldRateLimited. Call with `organization` locked (see the module's note)."""
    limit = settings.CAPACITY_HOLD_RATE_PER_MINUTE
    if limit is None:
        return
    now = time.time()
    key = f"capacity:hold-rate:{organization.pk}:{int(now // 60)}"
    cache.add(key, 0, timeout=120)
    try:
        count = cache.incr(key)
    except ValueError:  # evicted between the two calls
        cache.set(key, 1, timeout=120)
        count = 1
    if count > limit:
        wait = max(1, 60 - int(now % 60))
        raise HoldRateLimited(
            f"{organization.name} may place at most {limit} hold{'s' if limit != 1 else ''} a "
            f"minute; try again in "
            f"{wait} seconds. If you need more, {RAISE}.",
            retry_after=wait,
        )


LIMITS_PERMISSION = "accounts.change_organization"


@transaction.atomic
def organization_limits_set(
    *, organization: Organization, actor: User, changes: dict[str, int | None], reason: str = ""
) -> Organization:
    """Sales sets (a whole number from 0) or clears (None: back to the tier's) an
    organization's own capacity limits. Audited with the values before and after."""
    require_staff_permission(actor, LIMITS_PERMISSION, "change organizations")
    unknown = set(changes) - set(OVERRIDE_FIELDS)
    if unknown:
        raise ServiceError(f"These are not capacity limits: {', '.join(sorted(unknown))}.")
    for field, value in changes.items():
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31
        ):
            raise ServiceError(
                "Give a limit as a whole number from 0, or leave it blank for the tier's.",
                param=field,
            )
    reason = reason_clean(reason, required=False)
    locked = Organization.objects.select_for_update(of=("self",)).get(pk=organization.pk)
    diff = {
        field: [getattr(locked, field), value]
        for field, value in changes.items()
        if getattr(locked, field) != value
    }
    if not diff:
        return locked
    for field in diff:
        setattr(locked, field, changes[field])
    locked.save(update_fields=sorted(diff))
    audit.record(
        action="organization.limits_changed",
        actor=actor,
        organization=locked,
        target=locked,
        data={"changes": diff},
        reason=reason,
    )
    return locked
