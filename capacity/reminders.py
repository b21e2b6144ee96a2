"""Reminders that a running block ends soon, timed to the block's real length.

The configured leads (24 h and 1 h before the end) fit a block of days. A shorter block would
hear "ends in 24 h" the minute it starts, so no lead is longer than a fraction of the block's
length (a quarter: a reminder comes once three quarters of the block have run). Leads that
fold together (a 4-hour block: 24 h and 1 h both become 1 h) go out once. The e-mail says the
time actually left when it is written, and the end time.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import notifications
from .models import Reservation

S = Reservation.State


def reminder_leads(length: timedelta) -> list[timedelta]:
    """How long before the end of a block of this length each reminder goes out, longest
    first: every configured lead, capped at REMINDER_MAX_FRACTION of the length."""
    cap = length * settings.REMINDER_MAX_FRACTION
    leads = {min(lead, cap) for lead in settings.REMINDERS_BEFORE_END}
    return sorted((lead for lead in leads if lead > timedelta(0)), reverse=True)


def lead_label(lead: timedelta) -> str:
    """The key a sent reminder is remembered by: 24h, 1h, 7h30m, 15m."""
    minutes = int(lead.total_seconds() // 60)
    hours, rest = divmod(minutes, 60)
    if not rest:
        return f"{hours}h"
    return f"{hours}h{rest}m" if hours else f"{rest}m"


def time_left_label(left: timedelta) -> str:
    """What a customer reads: "23 h 57 min", "2 days 4 h", "1 h", "45 min" (whole minutes,
    rounded down, so it never promises more time than there is)."""
    minutes = max(int(left.total_seconds() // 60), 0)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = []
    if days:
        parts.append(f"{days} day{'s' if days != 1 else ''}")
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    return " ".join(parts) or "less than a minute"


def reminders_send(now: datetime | None = None) -> int:
    """Send every reminder that is due, once. When several are due at once (the sweep ran
    late), only the nearest goes out and the others count as sent."""
    now = now or timezone.now()
    if not settings.REMINDERS_BEFORE_END:
        return 0
    longest = max(settings.REMINDERS_BEFORE_END)
    candidates = Reservation.objects.filter(
        state=S.ACTIVE, ends_at__gt=now, ends_at__lte=now + longest
    ).values_list("pk", flat=True)
    sent = 0
    for pk in candidates:
        with transaction.atomic():
            locked = Reservation.objects.select_for_update().get(pk=pk)
            left = locked.ends_at - now
            leads = reminder_leads(locked.ends_at - locked.starts_at)
            due = [lead_label(lead) for lead in leads if left <= lead]
            if locked.state != S.ACTIVE or left <= timedelta(0) or not due:
                continue
            if due[-1] in locked.reminders_sent:
                continue
            locked.reminders_sent = sorted({*locked.reminders_sent, *due})
            locked.save(update_fields=["reminders_sent", "updated_at"])
            notifications.notification_send(
                locked, "reservation_ending", time_left=time_left_label(left)
            )
            sent += 1
    return sent
