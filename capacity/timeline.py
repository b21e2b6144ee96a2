"""The node timeline of a cluster: which reservation holds which node when, as SVG geometry.

`layout` is a pure function of its inputs (no queries, no clock), so the chart's positions and
labels are unit-tested; the admin view reads the rows (selectors.cluster_timeline) and the
template draws what it returns.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.dates import format_span

DAY = timedelta(days=1)
DAY_CHOICES = (7, 14, 28, 56)
DEFAULT_DAYS = 14

HOST_CHAR_WIDTH = 7.2  # of the 12 px hostname font
MIN_LABEL_WIDTH, MAX_LABEL_WIDTH = 80, 220  # the node names, left of the plot
RIGHT_MARGIN = 16
AXIS_HEIGHT = 40
ROW_HEIGHT = 24
BAR_HEIGHT = 16
CHAR_WIDTH = 6.4  # of the 11 px label font, for deciding what fits in a bar
BAR_PADDING = 4

STATE_COLOURS = {
    "held": ("#fde68a", "#78350f"),
    "scheduled": ("#bfdbfe", "#1e3a8a"),
    "provisioning": ("#ddd6fe", "#4c1d95"),
    "active": ("#86efac", "#14532d"),
    "releasing": ("#e5e7eb", "#374151"),
}
FALLBACK_COLOURS = ("#e5e7eb", "#374151")


@dataclass(frozen=True)
class Lane:
    node_id: int
    hostname: str
    status: str  # available, maintenance, retired
    status_reason: str = ""


@dataclass(frozen=True)
class Booking:
    node_id: int
    starts_at: datetime
    ends_at: datetime
    public_id: str
    organization: str
    state: str
    url: str = ""


@dataclass(frozen=True)
class Row:
    y: float
    text_y: float
    hostname: str
    label: str  # the hostname without the cluster's prefix
    status: str
    status_reason: str
    shaded: bool  # every other row, for reading across


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    fill: str
    ink: str
    label: str
    label_x: float
    label_y: float
    title: str
    url: str
    state: str
    continues_before: bool  # started before the chart
    continues_after: bool  # ends after the chart

    @property
    def right(self) -> float:
        return round(self.x + self.width, 1)


@dataclass(frozen=True)
class Tick:
    x: float
    label: str  # empty: a day line without a label


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    row_height: int
    rows: list[Row]
    bars: list[Bar]
    ticks: list[Tick]
    now_x: float | None
    start: datetime
    end: datetime

    @property
    def plot_width(self) -> int:
        return self.plot_right - self.plot_left


def window(now: datetime, days: int) -> tuple[datetime, datetime]:
    """From the start of yesterday (UTC), for `days` days."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - DAY
    return start, start + days * DAY


def parse_days(value: str | None) -> int:
    try:
        days = int(value or DEFAULT_DAYS)
    except ValueError:
        return DEFAULT_DAYS
    return days if days in DAY_CHOICES else DEFAULT_DAYS


def fit_label(public_id: str, organization: str, width: float) -> str:
    """The longest of "id · organization", "id" that fits in a bar `width` px wide, or ""."""
    room = width - 2 * BAR_PADDING
    for label in (f"{public_id} · {organization}", public_id):
        if len(label) * CHAR_WIDTH <= room:
            return label
    return ""


def layout(
    *,
    lanes: list[Lane],
    bookings: list[Booking],
    start: datetime,
    end: datetime,
    now: datetime,
    width: int = 1100,
    name_prefix: str = "",
) -> Chart:
    """Rows for `lanes` in order, a bar per booking on a known lane within [start, end) (clipped
    to it), a tick per day and the now line. `name_prefix` (the cluster's "code-") is left out
    of the row labels, so the plot gets the room."""
    labels = [lane.hostname.removeprefix(name_prefix) or lane.hostname for lane in lanes]
    longest = max((len(label) for label in labels), default=0)
    plot_left = int(min(max(longest * HOST_CHAR_WIDTH + 24, MIN_LABEL_WIDTH), MAX_LABEL_WIDTH))
    plot_right = width - RIGHT_MARGIN
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        clamped = min(max(at, start), end)
        return round(
            plot_left + (clamped - start).total_seconds() / span * (plot_right - plot_left), 1
        )

    rows = []
    row_of = {}
    for index, lane in enumerate(lanes):
        y = AXIS_HEIGHT + index * ROW_HEIGHT
        row_of[lane.node_id] = y
        rows.append(
            Row(
                y=y,
                text_y=y + ROW_HEIGHT - 8,
                hostname=lane.hostname,
                label=labels[index],
                status=lane.status,
                status_reason=lane.status_reason,
                shaded=index % 2 == 1,
            )
        )
    bars = []
    for booking in bookings:
        if booking.node_id not in row_of or booking.ends_at <= start or booking.starts_at >= end:
            continue
        left, right = x(booking.starts_at), x(booking.ends_at)
        bar_width = round(max(right - left, 1.0), 1)
        bar_y = row_of[booking.node_id] + (ROW_HEIGHT - BAR_HEIGHT) / 2
        fill, ink = STATE_COLOURS.get(booking.state, FALLBACK_COLOURS)
        bars.append(
            Bar(
                x=left,
                y=bar_y,
                width=bar_width,
                height=BAR_HEIGHT,
                fill=fill,
                ink=ink,
                label=fit_label(booking.public_id, booking.organization, bar_width),
                label_x=round(left + BAR_PADDING, 1),
                label_y=bar_y + BAR_HEIGHT - 4,
                title=(
                    f"{booking.public_id} · {booking.organization} · {booking.state} · "
                    f"{format_span(booking.starts_at, booking.ends_at)}"
                ),
                url=booking.url,
                state=booking.state,
                continues_before=booking.starts_at < start,
                continues_after=booking.ends_at > end,
            )
        )
    days = round(span / DAY.total_seconds())
    day_width = (plot_right - plot_left) / max(days, 1)
    ticks = []
    for offset in range(days + 1):
        day = start + offset * DAY
        # Wide days get a label each ("Tue 1", the month on the first and on the 1st); narrow
        # ones only on Mondays, with the month.
        daily = day_width >= 56
        label = ""
        if offset < days and (daily or day.weekday() == 0):
            with_month = not daily or offset == 0 or day.day == 1
            label = f"{day:%a} {day.day}" + (f" {day:%b}" if with_month else "")
        ticks.append(Tick(x=x(day), label=label))
    height = AXIS_HEIGHT + len(lanes) * ROW_HEIGHT + 8
    return Chart(
        width=width,
        height=height,
        plot_left=plot_left,
        plot_right=plot_right,
        plot_top=AXIS_HEIGHT,
        plot_bottom=AXIS_HEIGHT + len(lanes) * ROW_HEIGHT,
        row_height=ROW_HEIGHT,
        rows=rows,
        bars=bars,
        ticks=ticks,
        now_x=x(now) if start <= now <= end else None,
        start=start,
        end=end,
    )
