"""The one format for dates and times people read (the API speaks ISO 8601 instead).

Every moment is shown in UTC with its zone: "Thu 3 Dec 2026, 10:00 UTC"; a date alone reads
"Thu 3 Dec 2026". The template filters `when` and `day` and the Django formats module
(portal/formats/en/formats.py, used by the admin) say the same.
"""

from datetime import UTC, date, datetime

from django.utils import dateformat

# Django's date-format letters (the `date` template filter and settings.DATETIME_FORMAT).
DATE_FORMAT = "D j M Y"
TIME_FORMAT = "H:i"
DATETIME_FORMAT = "D j M Y, H:i e"  # e: the zone's name, UTC for every aware moment we show


def format_datetime(value: datetime | None) -> str:
    """A moment in UTC with the zone: "Thu 3 Dec 2026, 10:00 UTC" ("—" for none)."""
    if value is None:
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return dateformat.format(value, "D j M Y, H:i") + " UTC"


def format_date(value: date) -> str:
    """A date alone: "Thu 3 Dec 2026" (a moment's date is its date in UTC)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.astimezone(UTC)
    return dateformat.format(value, DATE_FORMAT)


def format_span(starts_at: datetime, ends_at: datetime) -> str:
    """A window: its start and its end, each as `format_datetime` writes them, joined by a
    dash."""
    return f"{format_datetime(starts_at)} – {format_datetime(ends_at)}"
