"""How dates and times read in English across the portal, the e-mails and the admin: one
format with the zone ("Thu 3 Dec 2026, 10:00 UTC"); a date alone "Thu 3 Dec 2026". Input
formats stay Django's. The API speaks ISO 8601 (REST_FRAMEWORK's formats)."""

from core.dates import DATE_FORMAT, DATETIME_FORMAT, TIME_FORMAT

SHORT_DATE_FORMAT = DATE_FORMAT
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
MONTH_DAY_FORMAT = "j M"
YEAR_MONTH_FORMAT = "M Y"

__all__ = [
    "DATETIME_FORMAT",
    "DATE_FORMAT",
    "MONTH_DAY_FORMAT",
    "SHORT_DATETIME_FORMAT",
    "SHORT_DATE_FORMAT",
    "TIME_FORMAT",
    "YEAR_MONTH_FORMAT",
]
