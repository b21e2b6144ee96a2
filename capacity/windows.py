"""Reservation windows: whole nodes, whole hours, on hour boundaries, within the booking limits."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from core.dates import format_datetime
from core.errors import ServiceError

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Window:
    starts_at: datetime
    ends_at: datetime
    starts_on_payment: bool = False

    @property
    def hours(self) -> int:
        return int((self.ends_at - self.starts_at) / HOUR)

    @property
    def held_until(self) -> datetime:
        """Until when a hold for this window keeps the nodes: its end, or for a block that
        starts now, past the latest end it could have (`start_now_held_until`)."""
        if not self.starts_on_payment:
            return self.ends_at
        return start_now_held_until(self, self.starts_at + settings.CAPACITY_HOLD)


def ceil_hour(moment: datetime) -> datetime:
    """The next whole UTC hour (an hour in +05:30 is not one)."""
    moment = moment.astimezone(UTC) if timezone.is_aware(moment) else moment
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + HOUR


def start_now_held_until(window: Window, hold_expires_at: datetime) -> datetime:
    """How long a start-now block's nodes are held while it waits for payment.

    The block starts when its payment is confirmed and runs its whole length from then, so
    the latest it can end is the hold's expiry plus its hours; the nodes are held to the end
    of the whole hour after that, so that end is always free (no block starts off the hour).
    """
    return ceil_hour(hold_expires_at + window.hours * HOUR)


def window_for(
    *, starts_at: datetime | None, duration_hours: int, now: datetime | None = None
) -> Window:
    """Validate a requested window. No start means "now": the block starts the minute its
    payment is confirmed and runs `duration_hours` from then (the window returned starts at
    this minute; confirmation moves it)."""
    now = now or timezone.now()
    if not isinstance(duration_hours, int) or isinstance(duration_hours, bool):
        raise ServiceError(
            "Give the duration in whole hours.", code="invalid_duration", param="duration_hours"
        )
    if not settings.CAPACITY_MIN_HOURS <= duration_hours <= settings.CAPACITY_MAX_HOURS:
        raise ServiceError(
            f"Reserve between {settings.CAPACITY_MIN_HOURS} and {settings.CAPACITY_MAX_HOURS} "
            f"hours ({settings.CAPACITY_MAX_HOURS // 24} days).",
            code="duration_out_of_range",
            param="duration_hours",
        )
    if starts_at is None:
        start = now.replace(second=0, microsecond=0)
        return Window(start, start + duration_hours * HOUR, starts_on_payment=True)
    if timezone.is_naive(starts_at):
        raise ServiceError(
            "Give the start with a time zone, e.g. 2026-12-01T09:00:00Z.",
            code="start_without_timezone",
            param="starts_at",
        )
    check_on_utc_hour(starts_at)
    starts_at = starts_at.astimezone(UTC)
    if starts_at <= now:
        raise ServiceError(
            "The start is in the past. Choose a later hour, or start now.",
            code="start_in_past",
            param="starts_at",
        )
    latest = now + settings.CAPACITY_MAX_LEAD
    if starts_at > latest:
        raise ServiceError(
            f"Blocks can start at most {settings.CAPACITY_MAX_LEAD.days // 7} weeks ahead "
            f"(until {format_datetime(latest.replace(minute=0, second=0, microsecond=0))}).",
            code="start_too_far",
            param="starts_at",
        )
    return Window(starts_at, starts_at + duration_hours * HOUR)


def check_on_utc_hour(starts_at: datetime) -> None:
    """Blocks start on a whole hour in UTC: an offset of half an hour (India) or 45 minutes
    (Nepal) turns 09:00 local into a start off the hour, which the hourly capacity count
    cannot hold. The message shows the UTC time the start really is."""
    utc = starts_at.astimezone(UTC)
    if (utc.minute, utc.second, utc.microsecond) == (0, 0, 0):
        return
    if starts_at.utcoffset() == timedelta(0):
        message = "Blocks start on the hour (for example 09:00, not 09:30)."
    else:
        spec = "minutes" if (utc.second, utc.microsecond) == (0, 0) else "seconds"
        given = starts_at.isoformat(timespec=spec)[11:]
        message = (
            f"Blocks start on the hour in UTC: {given} is {utc.isoformat(timespec=spec)[11:-6]} "
            "UTC."
        )
    raise ServiceError(message, code="start_not_on_hour", param="starts_at")


def validate_node_count(node_count: int) -> None:
    if not isinstance(node_count, int) or isinstance(node_count, bool):
        raise ServiceError("Give the number of nodes as a whole number.", param="node_count")
    if not 1 <= node_count <= settings.CAPACITY_MAX_NODES:
        raise ServiceError(
            f"Reserve between 1 and {settings.CAPACITY_MAX_NODES} nodes at a time.",
            code="node_count_out_of_range",
            param="node_count",
        )
