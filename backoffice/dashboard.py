"""The back-office dashboard: capacity use ahead, money this month, what needs a look now.

Each panel is shown to the staff whose permissions cover its data: revenue to those who may read
the ledger, reviews to those who may see organizations, reservations to those who may see them.
Every panel is a fixed number of queries, whatever the size of the business.
"""

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncMonth
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import Organization
from billing.models import LedgerEntry
from capacity import selectors as capacity_selectors
from capacity.models import Cluster, GpuModel, Incident, Node, Region, Reservation
from core.staff import staff_may

S = Reservation.State
DAYS = 56  # eight weeks ahead, as far as customers can book
LIST_LENGTH = 8
# From idle to fully booked: five steps of one hue, so the eye reads "more" without a legend.
SHADES = ["#eef2ff", "#c7d2fe", "#818cf8", "#4f46e5", "#312e81"]


def _shade(share: float) -> str:
    if share <= 0:
        return SHADES[0]
    return SHADES[min(4, 1 + int(share * 4))] if share < 1 else SHADES[4]


# --- Utilization --------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeatCell:
    day: date
    booked: float  # share of the pool's node-hours held by live reservations
    nodes: int

    @property
    def percent(self) -> int:
        return round(self.booked * 100)

    @property
    def shade(self) -> str:
        return _shade(self.booked)


@dataclass(frozen=True)
class HeatRow:
    gpu_model: GpuModel
    region: Region
    nodes: int
    cells: list[HeatCell]

    @property
    def average(self) -> int:
        return round(sum(c.booked for c in self.cells) / len(self.cells) * 100) if self.cells else 0


@dataclass(frozen=True)
class Heatmap:
    first: date
    rows: list[HeatRow]
    cell: int = 12  # px, the SVG's own units
    gap: int = 2
    label_width: int = 190

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=d) for d in range(DAYS)]

    @property
    def week_starts(self) -> list[tuple[int, date]]:
        return [(self.x(d), self.first + timedelta(days=d)) for d in range(0, DAYS, 7)]

    def x(self, day_index: int) -> int:
        return self.label_width + day_index * (self.cell + self.gap)

    @property
    def width(self) -> int:
        return self.x(DAYS) + 40

    @property
    def height(self) -> int:
        return 24 + len(self.rows) * (self.cell + self.gap) + 4

    def placed(self) -> list[tuple[int, HeatRow, list[tuple[int, HeatCell]]]]:
        """Rows with their y and cells with their x, for the template."""
        return [
            (
                24 + r * (self.cell + self.gap),
                row,
                [(self.x(d), cell) for d, cell in enumerate(row.cells)],
            )
            for r, row in enumerate(self.rows)
        ]


def utilization(now: datetime) -> Heatmap:
    """Booked share of each pool (GPU model in a region) per day for the next eight weeks."""
    first = now.replace(hour=0, minute=0, second=0, microsecond=0)
    clusters = list(
        Cluster.objects.filter(is_active=True, region__is_active=True, gpu_model__is_active=True)
        .select_related("gpu_model", "region")
        .order_by("gpu_model__sort_order", "gpu_model__name", "region__code", "pk")
    )
    pools: dict[tuple[int, int], list[Cluster]] = {}
    for cluster in clusters:
        pools.setdefault((cluster.gpu_model_id, cluster.region_id), []).append(cluster)
    # One read of every pool's nodes and allocations, split by pool here: the page costs the
    # same queries however many GPU models and regions there are.
    occupancy = capacity_selectors.occupancy(clusters, first, DAYS * 24)
    rows = []
    for members in pools.values():
        in_pool = np.isin(occupancy.cluster_ids, [c.pk for c in members])
        nodes = int(in_pool.sum())
        booked_per_hour = occupancy.busy[in_pool].sum(axis=0) if nodes else None
        cells = []
        for day in range(DAYS):
            if booked_per_hour is None:
                share = 0.0
            else:
                share = float(booked_per_hour[day * 24 : (day + 1) * 24].sum()) / (nodes * 24)
            cells.append(HeatCell(first.date() + timedelta(days=day), share, nodes))
        rows.append(HeatRow(members[0].gpu_model, members[0].region, nodes, cells))
    return Heatmap(first=first.date(), rows=rows)


# --- Money ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonthMoney:
    label: str
    month: date
    currency: str
    booked: Decimal  # charges and usage, less credits given back
    collected: Decimal  # card and invoice payments received, less refunds and disputes lost


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def revenue(now: datetime) -> list[MonthMoney]:
    """This month and last, per currency, from the ledger (one query)."""
    this_month = _month_start(now)
    last_month = _month_start(this_month - timedelta(days=1))
    K = LedgerEntry.Kind
    rows = (
        LedgerEntry.objects.filter(created_at__gte=last_month)
        .annotate(month=TruncMonth("created_at"))
        .values("month", "currency")
        .annotate(
            booked=Sum("amount", filter=Q(kind__in=[K.CHARGE, K.USAGE, K.CREDIT])),
            received=Sum("amount", filter=Q(kind__in=[K.PAYMENT, K.INVOICE_PAYMENT])),
            # A dispute lost took the money back like a refund.
            refunded=Sum("amount", filter=Q(kind__in=[K.REFUND, K.DISPUTE_LOSS])),
        )
        .order_by("-month", "currency")
    )
    zero = Decimal("0.00")
    found = {
        (row["month"].date(), row["currency"]): MonthMoney(
            label="",
            month=row["month"].date(),
            currency=row["currency"],
            booked=row["booked"] or zero,
            collected=-(row["received"] or zero) - (row["refunded"] or zero),
        )
        for row in rows
    }
    currencies = sorted({currency for _, currency in found} or {"usd"})
    return [
        replace(
            found.get((month.date(), currency), MonthMoney("", month.date(), currency, zero, zero)),
            label=label,
        )
        for label, month in (("This month", this_month), ("Last month", last_month))
        for currency in currencies
    ]


# --- Attention --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attention:
    held: list[Reservation]
    held_count: int
    failing: list[Reservation]
    failed_count: int
    stuck_count: int
    open_incidents: int
    nodes_in_maintenance: int


def attention(now: datetime) -> Attention:
    """Reservations held or failing right now, and what operations has open."""
    stuck_before = now - settings.PROVISIONING_STUCK_AFTER
    recent = now - timedelta(days=7)
    reservations = Reservation.objects.select_related("organization", "gpu_model", "region")
    failing_q = Q(state=S.FAILED, updated_at__gte=recent) | Q(
        state__in=[S.PROVISIONING, S.RELEASING], updated_at__lt=stuck_before
    )
    counts = Reservation.objects.aggregate(
        held=Count("pk", filter=Q(state=S.HELD)),
        failed=Count("pk", filter=Q(state=S.FAILED, updated_at__gte=recent)),
        stuck=Count(
            "pk", filter=Q(state__in=[S.PROVISIONING, S.RELEASING], updated_at__lt=stuck_before)
        ),
    )
    held = reservations.filter(state=S.HELD).order_by("hold_expires_at", "pk")
    return Attention(
        held=list(held[:LIST_LENGTH]),
        held_count=counts["held"],
        failing=list(reservations.filter(failing_q).order_by("-updated_at", "-pk")[:LIST_LENGTH]),
        failed_count=counts["failed"],
        stuck_count=counts["stuck"],
        open_incidents=Incident.objects.filter(resolved_at__isnull=True).count(),
        nodes_in_maintenance=Node.objects.filter(status=Node.Status.MAINTENANCE).count(),
    )


def waiting_review() -> tuple[list[Organization], int]:
    """New organizations nobody in sales has looked at yet, oldest first."""
    waiting = Organization.objects.filter(reviewed_at__isnull=True)
    return list(waiting.order_by("created_at", "pk")[:LIST_LENGTH]), waiting.count()


def context(request: HttpRequest) -> dict:
    """The panels this staff member may see."""
    now = timezone.now()
    user = request.user
    panels: dict = {"dashboard": True, "now": now}
    if staff_may(user, "capacity.view_reservation"):
        panels["heatmap"] = utilization(now)
        panels["attention"] = attention(now)
    if staff_may(user, "billing.view_ledgerentry"):
        panels["revenue"] = revenue(now)
    if staff_may(user, "accounts.view_organization"):
        panels["review"], panels["review_count"] = waiting_review()
    return panels
