"""Operations in the back office: inventory, reservations, incidents and the node timeline.

Every action calls a service in capacity.operations (which checks the staff permission and
writes the audit events); destructive ones show an intermediate page first, and a batch reports
each row that failed with its reason. Change lists read their related rows in the same query
(list_select_related or annotations), so their query count does not grow with the page.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import capfirst

from accounts.models import Organization
from backoffice.actor import staff_actor
from capacity import operations, selectors, timeline
from capacity.drivers.slurm import inventory as slurm_inventory
from capacity.models import (
    Allocation,
    Cluster,
    DurationDiscount,
    GpuModel,
    Incident,
    ListPrice,
    Node,
    Region,
    Reservation,
)
from capacity.services import EXTENDABLE
from core.errors import ServiceError
from core.models import AuditEvent
from core.staff import AuditedAdmin, StaffReasonForm, staff_may

S = Reservation.State


# --- Catalog (read by everyone, edited by whoever holds the model permissions) ----------------
@admin.register(GpuModel)
class GpuModelAdmin(AuditedAdmin):
    list_display = ["name", "slug", "memory_gb", "gpus_per_node", "is_active"]


@admin.register(ListPrice)
class ListPriceAdmin(AuditedAdmin):
    list_display = ["gpu_model", "region", "price_per_gpu_hour", "currency"]
    list_select_related = ["gpu_model", "region"]


@admin.register(DurationDiscount)
class DurationDiscountAdmin(AuditedAdmin):
    list_display = ["label", "min_hours", "percent"]


# --- Shared: intermediate pages and per-row results --------------------------------------------
@dataclass(frozen=True)
class Section:
    """One block of an intermediate page: a heading, a table, and what stops it (if anything)."""

    title: SafeString | str
    headers: list[str]
    rows: list[list[Any]]
    problem: str = ""
    note: str = ""


class CancelForm(StaffReasonForm):
    refund = forms.ChoiceField(
        label="Refund",
        choices=operations.RefundBasis.choices,
        initial=operations.RefundBasis.POLICY,
        widget=forms.RadioSelect,
    )
    field_order = ["refund", "reason"]


class ExtendForm(StaffReasonForm):
    hours = forms.IntegerField(
        label="Extend by (hours)", min_value=1, max_value=settings.CAPACITY_MAX_HOURS
    )
    field_order = ["hours", "reason"]


class DrainForm(StaffReasonForm):
    flag_unswappable = forms.BooleanField(
        label="Drain anyway",
        required=False,
        help_text=(
            "Leave reservations that have no spare on the node in maintenance and open an "
            "incident for each. Without this, a node with such a reservation is not drained."
        ),
    )


BULK_LIMIT = 100  # rows one action may take; the confirmation page posts every id


class OperationsMixin(admin.ModelAdmin):
    """Intermediate pages and per-row reporting for the actions of an operations admin."""

    confirm_template = "admin/capacity/confirm_action.html"

    # django-stubs declares an `action_location` argument that Django 5.2 does not pass.
    def response_action(  # type: ignore[override]
        self, request: HttpRequest, queryset: QuerySet
    ) -> HttpResponse | None:
        selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
        across = request.POST.get("select_across") == "1"
        count = queryset.count() if across else len(selected)
        if count > BULK_LIMIT:
            messages.error(request, f"Select at most {BULK_LIMIT} rows at a time.")
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset)

    def confirmation(
        self,
        request: HttpRequest,
        queryset: Iterable[Any],
        *,
        action: str,
        title: str,
        intro: str,
        form: forms.Form,
        sections: list[Section],
        submit: str,
    ) -> TemplateResponse:
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "opts": opts,
            "app_label": opts.app_label,
            "action": action,
            "ids": [obj.pk for obj in queryset],
            "intro": intro,
            "form": form,
            "sections": sections,
            "submit": submit,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "changelist_url": request.get_full_path(),
        }
        return TemplateResponse(request, self.confirm_template, context)

    def run_each(
        self,
        request: HttpRequest,
        objects: Iterable[Any],
        call: Callable[[Any], str],
        *,
        done: str,
    ) -> None:
        """Call the service for each object; one error message per failed row, then one
        success message listing the rows done."""
        succeeded = []
        for obj in objects:
            try:
                succeeded.append(call(obj))
            except ServiceError as exc:
                messages.error(request, self.failure(obj, exc.message))
        if succeeded:
            messages.success(request, f"{done}: {'; '.join(succeeded)}.")

    def failure(self, obj: Any, message: str) -> str:
        """ "Node east-a-n00 was not drained: …", or "Reservation rsv_…: …" when the service's
        message does not begin with the object's name. The kind of object comes first, so the
        admin's capitalized first letter falls on it and not on a hostname."""
        kind = capfirst(self.model._meta.verbose_name)
        name = self.row_name(obj)
        return (
            f"{kind} {message}" if message.startswith(f"{name} ") else f"{kind} {name}: {message}"
        )

    def row_name(self, obj: Any) -> str:
        return str(obj)


def _bound(form_class: type[forms.Form], request: HttpRequest) -> forms.Form:
    """The action's form, bound only when its intermediate page was submitted."""
    return form_class(request.POST) if "apply" in request.POST else form_class()


def _window(starts_at: datetime, ends_at: datetime) -> str:
    return f"{starts_at:%d %b %H:%M} – {ends_at:%d %b %H:%M} UTC"


def _stranded(count: int) -> str:
    if not count:
        return ""
    which = "1 reservation has" if count == 1 else f"{count} reservations have"
    return f"{which} no spare: the drain is refused unless you choose “Drain anyway”."


def _reservation_link(reservation: Reservation) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>',
        reverse("admin:capacity_reservation_change", args=[reservation.pk]),
        reservation.public_id,
    )


# --- Inventory ----------------------------------------------------------------------------------
@admin.register(Region)
class RegionAdmin(AuditedAdmin):
    list_display = ["code", "name", "location", "cluster_count", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["^code", "^name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Region]:
        return super().get_queryset(request).annotate(clusters_n=Count("clusters"))

    @admin.display(description="Clusters", ordering="clusters_n")
    def cluster_count(self, region: Region) -> int:
        return region.clusters_n  # type: ignore[attr-defined]


@admin.register(Cluster)
class ClusterAdmin(OperationsMixin, AuditedAdmin):
    list_display = [
        "code",
        "region",
        "gpu_model",
        "fabric",
        "nodes_total",
        "nodes_available",
        "nodes_maintenance",
        "timeline_link",
        "is_active",
    ]
    list_filter = ["region", "gpu_model", "is_active"]
    list_select_related = ["region", "gpu_model"]
    search_fields = ["^code"]
    change_form_template = "admin/capacity/cluster/change_form.html"
    actions = ["resync_from_slurm"]

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        if not slurm_inventory.enabled():  # nothing to sync from without the Slurm driver
            actions.pop("resync_from_slurm", None)
        return actions

    @admin.action(description="Re-sync from Slurm", permissions=["change"])
    def resync_from_slurm(
        self, request: HttpRequest, queryset: QuerySet[Cluster]
    ) -> HttpResponse | None:
        """Read Slurm's nodes, show what each selected cluster would gain and lose, and make it
        so once confirmed (one message a row). Slurm is read again on confirmation."""
        try:
            nodes = slurm_inventory.read_nodes()
        except ServiceError as exc:
            messages.error(request, f"Slurm could not be read; nothing was changed. {exc.message}")
            return None
        clusters = list(queryset.order_by("code"))
        form = _bound(forms.Form, request)
        if form.is_bound and form.is_valid():
            for cluster in clusters:
                try:
                    result = slurm_inventory.cluster_resync(
                        cluster=cluster, actor=staff_actor(request), nodes=nodes
                    )
                except ServiceError as exc:
                    messages.error(request, f"Cluster {cluster.code}: {exc.message}")
                    continue
                messages.success(request, f"Cluster {result.summary()}.")
            return None
        sections = [self._resync_preview(cluster, nodes) for cluster in clusters]
        return self.confirmation(
            request,
            clusters,
            action="resync_from_slurm",
            title="Re-sync from Slurm",
            intro=(
                "What Slurm lists now, against our inventory. Retired nodes take no new "
                "reservations; live reservations on them get an incident for operations."
            ),
            form=form,
            sections=sections,
            submit="Yes, re-sync",
        )

    @staticmethod
    def _resync_preview(cluster: Cluster, nodes: list) -> Section:
        """The re-sync worked out and rolled back: nothing is written, nothing is sent."""
        try:
            with transaction.atomic():
                result = slurm_inventory.cluster_resync(cluster=cluster, actor=None, nodes=nodes)
                transaction.set_rollback(True)
        except ServiceError as exc:
            return Section(title=cluster.code, headers=[], rows=[], problem=exc.message)
        rows = [
            [what, ", ".join(names)]
            for what, names in (
                ("Add", result.added),
                ("Add in maintenance (down in Slurm)", result.down),
                ("Back from retirement", result.returned),
                ("Retire (no longer in Slurm)", result.retired),
                (
                    "GPU count",
                    [f"{name} {old} → {new}" for name, old, new in result.gpus_changed],
                ),
                ("Skip", result.skipped),
            )
            if names
        ]
        note = "" if result.changed else f"Nothing would change ({result.unchanged} nodes)."
        return Section(title=cluster.code, headers=["Change", "Nodes"], rows=rows, note=note)

    def get_readonly_fields(self, request: HttpRequest, obj: Cluster | None = None) -> list[str]:
        # A cluster's nodes are booked as its GPU model in its region: moving the cluster would
        # move bookings with it, so a different pool is a new cluster.
        fixed = ["region", "gpu_model"] if obj is not None else []
        return [*super().get_readonly_fields(request, obj), *fixed]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Cluster]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                nodes_n=Count("nodes"),
                available_n=Count("nodes", filter=Q(nodes__status=Node.Status.AVAILABLE)),
                maintenance_n=Count("nodes", filter=Q(nodes__status=Node.Status.MAINTENANCE)),
            )
        )

    @admin.display(description="Nodes", ordering="nodes_n")
    def nodes_total(self, cluster: Cluster) -> int:
        return cluster.nodes_n  # type: ignore[attr-defined]

    @admin.display(description="Available", ordering="available_n")
    def nodes_available(self, cluster: Cluster) -> int:
        return cluster.available_n  # type: ignore[attr-defined]

    @admin.display(description="Maintenance", ordering="maintenance_n")
    def nodes_maintenance(self, cluster: Cluster) -> int:
        return cluster.maintenance_n  # type: ignore[attr-defined]

    @admin.display(description="Timeline")
    def timeline_link(self, cluster: Cluster) -> SafeString:
        url = reverse("admin:capacity_cluster_timeline", args=[cluster.pk])
        return format_html('<a href="{}">Node timeline</a>', url)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:object_id>/timeline/",
                self.admin_site.admin_view(self.timeline_view),
                name="capacity_cluster_timeline",
            ),
            *super().get_urls(),
        ]

    def timeline_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Which reservation holds which node of the cluster when, as a server-rendered SVG."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        cluster = get_object_or_404(
            Cluster.objects.select_related("region", "gpu_model"), pk=object_id
        )
        days = timeline.parse_days(request.GET.get("days"))
        now = timezone.now()
        start, end = timeline.window(now, days)
        data = selectors.cluster_timeline(cluster, start, end)
        linked = staff_may(request.user, "capacity.view_reservation")
        # One reverse for every bar: the pk goes where the placeholder is.
        url = reverse("admin:capacity_reservation_change", args=[0]).replace("/0/", "/{}/")
        chart = timeline.layout(
            lanes=[
                timeline.Lane(n["pk"], n["hostname"], n["status"], n["status_reason"])
                for n in data.nodes
            ],
            bookings=[
                timeline.Booking(
                    node_id=a["node_id"],
                    starts_at=a["starts_at"],
                    ends_at=a["ends_at"],
                    public_id=a["reservation__public_id"],
                    organization=a["reservation__organization__name"],
                    state=a["reservation__state"],
                    url=url.format(a["reservation_id"]) if linked else "",
                )
                for a in data.allocations
            ],
            start=start,
            end=end,
            now=now,
            name_prefix=f"{cluster.code}-",
        )
        statuses = [n["status"] for n in data.nodes]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Node timeline: {cluster.code}",
            "subtitle": None,
            "opts": self.opts,
            "cluster": cluster,
            "chart": chart,
            "days": days,
            "day_choices": timeline.DAY_CHOICES,
            "legend": [(state, timeline.STATE_COLOURS[state]) for state in timeline.STATE_COLOURS],
            "nodes_total": len(statuses),
            "nodes_maintenance": statuses.count(Node.Status.MAINTENANCE),
            "reservations_shown": len({a["reservation_id"] for a in data.allocations}),
        }
        return TemplateResponse(request, "admin/capacity/cluster_timeline.html", context)


class HostnameSearch:
    """Hostnames are lower case and unique: a prefix lookup reads the unique index."""

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip().lower()
        if not term:
            return queryset, False
        return queryset.filter(**{self.hostname_lookup: term}), False  # type: ignore[attr-defined]


@admin.register(Node)
class NodeAdmin(OperationsMixin, HostnameSearch, AuditedAdmin):
    change_list_template = "admin/capacity/change_list_compact.html"
    list_display = [
        "hostname",
        "cluster",
        "region",
        "gpu_model",
        "gpu_count",
        "status",
        "status_reason",
        "commitments",
    ]
    list_filter = ["status", "cluster__region", "cluster__gpu_model", "cluster"]
    list_select_related = ["cluster__region", "cluster__gpu_model"]
    search_fields = ["hostname"]
    search_help_text = "Hostname, or its beginning."
    hostname_lookup = "hostname__startswith"
    readonly_fields = ["status", "status_reason", "created_at"]
    fields = ["hostname", "cluster", "gpu_count", "status", "status_reason", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Node | None = None) -> list[str]:
        # Allocations carry the node's cluster (availability is read per cluster): a node that
        # changed cluster under live bookings could be sold twice. It is retired and re-added.
        return [*super().get_readonly_fields(request, obj), *(["cluster"] if obj else [])]

    actions = ["drain", "restore"]
    show_full_result_count = False

    def has_delete_permission(self, request: HttpRequest, obj: Node | None = None) -> bool:
        return False  # nodes are retired, never deleted: allocations refer to them

    def has_drain_permission(self, request: HttpRequest) -> bool:
        return staff_may(request.user, operations.DRAIN)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        live = Q(
            allocations__released_at__isnull=True,
            allocations__ends_at__gt=timezone.now(),
            allocations__reservation__state__in=selectors.MOVABLE_STATES,
        )
        return (
            super().get_queryset(request).annotate(commitments_n=Count("allocations", filter=live))
        )

    @admin.display(description="Reservations now or later", ordering="commitments_n")
    def commitments(self, node: Node) -> int:
        return node.commitments_n  # type: ignore[attr-defined]

    @admin.display(description="Region", ordering="cluster__region__code")
    def region(self, node: Node) -> str:
        return node.cluster.region.code

    @admin.display(description="GPU model", ordering="cluster__gpu_model__name")
    def gpu_model(self, node: Node) -> str:
        return node.cluster.gpu_model.name

    @admin.action(description="Drain into maintenance…", permissions=["drain"])
    def drain(self, request: HttpRequest, queryset: QuerySet[Node]) -> HttpResponse | None:
        nodes = list(queryset.select_related("cluster").order_by("hostname"))
        avoid = tuple(n.pk for n in nodes)
        form = _bound(DrainForm, request)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            flag = form.cleaned_data["flag_unswappable"]

            def drain_one(node: Node) -> str:
                result = operations.node_drain(
                    node=node,
                    actor=staff_actor(request),
                    reason=reason,
                    flag_unswappable=flag,
                    avoid=avoid,
                )
                moved = ", ".join(f"{p} to {h}" for p, h in result.swapped)
                parts = [f"{node.hostname} is in maintenance"]
                if moved:
                    parts.append(f"moved {moved}")
                if result.flagged:
                    parts.append(f"flagged {', '.join(result.flagged)} (no spare)")
                return ", ".join(parts)

            self.run_each(request, nodes, drain_one, done="Drained")
            return None
        sections = []
        claimed: list = []  # spares the earlier nodes of the batch will take
        for node in nodes:
            if node.status != Node.Status.AVAILABLE:
                sections.append(
                    Section(
                        title=f"{node.hostname} ({node.cluster.code})",
                        headers=[],
                        rows=[],
                        problem=f"Already {node.get_status_display().lower()}: it will be skipped.",
                    )
                )
                continue
            plan = operations.node_drain_plan(node=node, avoid=avoid, claimed=claimed)
            rows = [
                [
                    _reservation_link(m.allocation.reservation),
                    m.allocation.reservation.organization.name,
                    m.allocation.reservation.get_state_display(),
                    _window(m.starts_at, m.allocation.ends_at),
                    plan.spare_hostname(m)
                    or format_html('<strong class="no-spare">{}</strong>', "no spare"),
                ]
                for m in plan.moves
            ]
            sections.append(
                Section(
                    title=f"{node.hostname} ({node.cluster.code})",
                    headers=["Reservation", "Organization", "State", "Period to move", "Moves to"],
                    rows=rows,
                    problem=_stranded(len(plan.stranded)),
                    note="" if rows else "No reservations hold this node now or later.",
                )
            )
        return self.confirmation(
            request,
            nodes,
            action="drain",
            title="Drain nodes into maintenance",
            intro=(
                "Each reservation these nodes hold now or later moves to a free node of the same "
                "cluster for what is left of its period."
            ),
            form=form,
            sections=sections,
            submit="Drain",
        )

    @admin.action(description="Bring back from maintenance", permissions=["drain"])
    def restore(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self.run_each(
            request,
            queryset.order_by("hostname"),
            lambda node: operations.node_restore(node=node, actor=staff_actor(request)).hostname,
            done="Available again",
        )


# --- Reservations -------------------------------------------------------------------------------
class OrganizationFilter(admin.SimpleListFilter):
    """A box for the organization's slug or name, instead of a list of every customer."""

    title = "organization"
    parameter_name = "org"
    template = "admin/capacity/input_filter.html"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return []

    def has_output(self) -> bool:
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = (self.value() or "").strip()
        if not value:
            return queryset
        organizations = Organization.objects.filter(Q(slug=value.lower()) | Q(name__iexact=value))
        return queryset.filter(organization__in=organizations)

    # Its own template (an input box) reads its own keys, not the links django-stubs expects.
    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        yield {
            "value": self.value() or "",
            "hidden": [
                (key, value)
                for key, value in changelist.params.items()
                if key not in (self.parameter_name, "p")
            ],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }


class WhenFilter(admin.SimpleListFilter):
    title = "when"
    parameter_name = "when"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [
            ("running", "Running now"),
            ("today", "Starts today"),
            ("next7", "Starts in the next 7 days"),
            ("later", "Starts later"),
            ("past7", "Ended in the past 7 days"),
            ("past", "Ended"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        week = timedelta(days=7)
        match self.value():
            case "running":
                return queryset.filter(starts_at__lte=now, ends_at__gt=now)
            case "today":
                return queryset.filter(
                    starts_at__gte=midnight, starts_at__lt=midnight + timedelta(days=1)
                )
            case "next7":
                return queryset.filter(starts_at__gte=now, starts_at__lt=now + week)
            case "later":
                return queryset.filter(starts_at__gte=now)
            case "past7":
                return queryset.filter(ends_at__lte=now, ends_at__gt=now - week)
            case "past":
                return queryset.filter(ends_at__lte=now)
        return queryset


class AllocationInline(admin.TabularInline):
    model = Allocation
    extra = 0
    can_delete = False
    fields = readonly_fields = ("node", "cluster", "starts_at", "ends_at", "released_at")
    ordering = ["released_at", "node__hostname"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Allocation]:
        return super().get_queryset(request).select_related("node", "cluster")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    what: str
    who: str
    why: str
    ip: str


def describe(event: AuditEvent) -> str:
    """One line for an event of the reservation's timeline."""
    data = event.data or {}
    match event.action:
        case "reservation.created":
            return f"Created: held, {data.get('total')} {data.get('currency', '').upper()}"
        case "reservation.quoted":
            return f"Quoted by staff: held, {data.get('total')} {data.get('currency', '').upper()}"
        case "reservation.transition":
            text = f"{data.get('from')} → {data.get('to')}"
            if data.get("refund_due"):
                basis = f", {data['refund_basis']}" if data.get("refund_basis") else ""
                text += f" (refund due {data['refund_due']}{basis})"
            return text
        case "reservation.extended":
            return (
                f"Extended by {data.get('hours')} h to {data.get('to', '')[:16].replace('T', ' ')}"
                f" (+{data.get('amount')} {data.get('currency', '').upper()})"
            )
        case "reservation.extended_by_staff":
            return f"Extension by {data.get('hours')} h made by staff"
        case "reservation.node_swapped":
            return f"Node {data.get('from')} replaced by {data.get('to')}"
        case "reservation.node_drained":
            return f"Node {data.get('node')} drained with no spare (incident opened)"
        case "reservation.retried":
            return f"Retried: {data.get('task')} enqueued again"
    return event.action


def timeline_entries(events: Iterable[AuditEvent]) -> list[TimelineEntry]:
    kinds = dict(AuditEvent.ActorKind.choices)
    return [
        TimelineEntry(
            at=event.created_at,
            what=describe(event),
            who=" · ".join(p for p in (kinds.get(event.actor_kind, ""), event.actor_email) if p),
            why=event.reason,
            ip=event.ip_address or "",
        )
        for event in events
    ]


@admin.register(Reservation)
class ReservationAdmin(OperationsMixin, admin.ModelAdmin):
    change_list_template = "admin/capacity/change_list_compact.html"
    list_display = [
        "public_id",
        "organization",
        "state",
        "gpu_model",
        "region_code",
        "nodes",
        "starts",
        "hours",
        "total",
    ]
    list_filter = ["state", WhenFilter, "region", "gpu_model", OrganizationFilter]
    list_select_related = ["organization", "gpu_model", "region"]
    date_hierarchy = "starts_at"
    search_fields = ["public_id"]
    search_help_text = "Public id (rsv_…), or its beginning. Filter by organization on the right."
    show_full_result_count = False
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "public_id",
                    "organization",
                    "state",
                    "created_by",
                    "created_at",
                    "updated_at",
                ]
            },
        ),
        (
            "Capacity",
            {
                "fields": [
                    "gpu_model",
                    "region",
                    "cluster",
                    "node_count",
                    "starts_at",
                    "ends_at",
                    "starts_on_payment",
                    "hold_expires_at",
                ]
            },
        ),
        (
            "Price",
            {
                "fields": [
                    "currency",
                    "price_per_gpu_hour",
                    "price_source",
                    "subtotal",
                    "discount",
                    "total",
                    "refund_due",
                    "price_lines_text",
                ]
            },
        ),
        ("Quote", {"fields": ["quoted_by", "quote_note"], "classes": ["collapse"]}),
        ("Access", {"fields": ["access_details", "reminders_sent"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        *(
            f.name
            for f in Reservation._meta.fields
            if f.name not in ("access_secret", "request_token")
        ),
        "price_lines_text",
    ]
    inlines = [AllocationInline]
    actions = ["cancel_with_refund", "extend", "retry", "force_release"]
    change_form_template = "admin/capacity/reservation/change_form.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Reservation | None = None) -> bool:
        return False  # the audit trail and the ledger refer to reservations

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return staff_may(request.user, operations.OPERATE)

    @admin.display(description="Region", ordering="region__code")
    def region_code(self, reservation: Reservation) -> str:
        return reservation.region.code

    @admin.display(description="Nodes", ordering="node_count")
    def nodes(self, reservation: Reservation) -> int:
        return reservation.node_count

    @admin.display(description="Starts (UTC)", ordering="starts_at")
    def starts(self, reservation: Reservation) -> str:
        return f"{reservation.starts_at:%d %b %Y %H:%M}"

    @admin.display(description="Hours")
    def hours(self, reservation: Reservation) -> int:
        return reservation.duration_hours

    @admin.display(description="Price lines")
    def price_lines_text(self, reservation: Reservation) -> SafeString:
        return format_html_join(
            mark_safe("<br>"),
            "{}: {}",
            (
                (line.get("description", ""), line.get("amount", ""))
                for line in reservation.price_lines
            ),
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip().lower()
        if not term:
            return queryset, False
        if not term.startswith("rsv_"):
            term = f"rsv_{term}"
        if len(term) == len("rsv_") + 14:
            return queryset.filter(public_id=term), False
        return queryset.filter(public_id__startswith=term), False

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict,
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Reservation | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["timeline"] = timeline_entries(selectors.reservation_timeline(obj))
            context["can_operate"] = self.has_operate_permission(request)
            context["operations"] = [
                (name, label)
                for name, label, states in (
                    ("cancel_with_refund", "Cancel with refund…", operations.CANCELABLE),
                    ("extend", "Extend…", EXTENDABLE),
                    ("retry", "Retry", tuple(operations.RETRY_TASKS)),
                    ("force_release", "Force release…", (S.ACTIVE,)),
                )
                if obj.state in states
            ]
            context["changelist_url"] = reverse("admin:capacity_reservation_changelist")
            if staff_may(request.user, "capacity.view_cluster"):
                context["timeline_url"] = reverse(
                    "admin:capacity_cluster_timeline", args=[obj.cluster_id]
                )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _rows(self, reservations: list[Reservation], extra: Callable[[Reservation], list]) -> list:
        return [
            [
                _reservation_link(r),
                r.organization.name,
                r.get_state_display(),
                _window(r.starts_at, r.ends_at),
                *extra(r),
            ]
            for r in reservations
        ]

    @admin.action(description="Cancel with refund…", permissions=["operate"])
    def cancel_with_refund(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        reservations = list(queryset.select_related("organization").order_by("starts_at", "pk"))
        form = _bound(CancelForm, request)
        if form.is_bound and form.is_valid():
            refund, reason = form.cleaned_data["refund"], form.cleaned_data["reason"]

            def cancel(r: Reservation) -> str:
                canceled = operations.reservation_cancel(
                    reservation=r, actor=staff_actor(request), reason=reason, refund=refund
                )
                due = canceled.refund_due
                return (
                    f"{r.public_id} (refund due {due} {r.currency.upper()})" if due else r.public_id
                )

            self.run_each(request, reservations, cancel, done="Canceled")
            return None

        def refunds(r: Reservation) -> list:
            if r.state not in operations.CANCELABLE:
                return [
                    "—",
                    "—",
                    "cannot be canceled" + (": release it instead" if r.state == S.ACTIVE else ""),
                ]
            policy, percent = operations.refund_calculate(r, operations.RefundBasis.POLICY)
            full, _ = operations.refund_calculate(r, operations.RefundBasis.FULL)
            if policy is None:
                return ["nothing paid", "nothing paid", ""]
            return [f"{policy} ({percent} %)", f"{full}", ""]

        return self.confirmation(
            request,
            reservations,
            action="cancel_with_refund",
            title="Cancel reservations",
            intro=(
                "The nodes are released at once, the customer is told by e-mail, and billing "
                "pays back the refund due. Held reservations have nothing to refund."
            ),
            form=form,
            sections=[
                Section(
                    title="Reservations",
                    headers=[
                        "Reservation",
                        "Organization",
                        "State",
                        "Window",
                        "Policy refund",
                        "Full refund",
                        "",
                    ],
                    rows=self._rows(reservations, refunds),
                )
            ],
            submit="Cancel these reservations",
        )

    @admin.action(description="Extend…", permissions=["operate"])
    def extend(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        reservations = list(
            queryset.select_related("organization", "gpu_model").order_by("starts_at", "pk")
        )
        form = _bound(ExtendForm, request)
        if form.is_bound and form.is_valid():
            hours, reason = form.cleaned_data["hours"], form.cleaned_data["reason"]

            def extend_one(r: Reservation) -> str:
                extended = operations.reservation_extend(
                    reservation=r, actor=staff_actor(request), hours=hours, reason=reason
                )
                return f"{r.public_id} to {extended.ends_at:%d %b %H:%M} UTC"

            self.run_each(request, reservations, extend_one, done=f"Extended by {hours} h")
            return None
        return self.confirmation(
            request,
            reservations,
            action="extend",
            title="Extend reservations",
            intro=(
                "Each reservation keeps its nodes for the extra hours if nobody holds them right "
                "after its end, and its price grows by the extension at its own rate."
            ),
            form=form,
            sections=[
                Section(
                    title="Reservations",
                    headers=["Reservation", "Organization", "State", "Window"],
                    rows=self._rows(reservations, lambda r: []),
                )
            ],
            submit="Extend",
        )

    @admin.action(description="Retry provisioning or release", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet) -> None:
        def retry_one(r: Reservation) -> str:
            task = operations.reservation_retry(reservation=r, actor=staff_actor(request))
            return f"{r.public_id} ({task})"

        self.run_each(request, queryset.order_by("pk"), retry_one, done="Retried")

    @admin.action(description="Force release…", permissions=["operate"])
    def force_release(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        reservations = list(queryset.select_related("organization").order_by("starts_at", "pk"))
        form = _bound(StaffReasonForm, request)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            self.run_each(
                request,
                reservations,
                lambda r: (
                    operations.reservation_release(
                        reservation=r, actor=staff_actor(request), reason=reason
                    ).public_id
                ),
                done="Releasing",
            )
            return None
        return self.confirmation(
            request,
            reservations,
            action="force_release",
            title="Force release",
            intro=(
                "Active blocks end now: the nodes are torn down and freed. Nothing is refunded "
                "here; a refund for unused time is finance's decision."
            ),
            form=form,
            sections=[
                Section(
                    title="Reservations",
                    headers=["Reservation", "Organization", "State", "Window", ""],
                    rows=self._rows(
                        reservations,
                        lambda r: ["" if r.state == S.ACTIVE else "not active: will be skipped"],
                    ),
                )
            ],
            submit="Release now",
        )


@admin.register(Allocation)
class AllocationAdmin(HostnameSearch, admin.ModelAdmin):
    change_list_template = "admin/capacity/change_list_compact.html"
    list_display = [
        "reservation",
        "organization",
        "node",
        "cluster",
        "starts_at",
        "ends_at",
        "released_at",
    ]
    list_filter = ["cluster"]
    list_select_related = ["reservation__organization", "node", "cluster"]
    search_fields = ["node__hostname"]
    search_help_text = "Node hostname, or its beginning."
    hostname_lookup = "node__hostname__startswith"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Allocation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Allocation | None = None) -> bool:
        return False

    @admin.display(description="Organization", ordering="reservation__organization__name")
    def organization(self, allocation: Allocation) -> str:
        return allocation.reservation.organization.name


# --- Incidents ----------------------------------------------------------------------------------
class OpenFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "open"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [("yes", "Open"), ("no", "Resolved")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(Incident)
class IncidentAdmin(OperationsMixin, admin.ModelAdmin):
    list_display = ["created_at", "kind", "node", "reservation", "summary", "resolved_at"]
    list_filter = [OpenFilter, "kind"]
    list_select_related = ["node", "reservation"]
    search_fields = ["detail"]
    search_help_text = "Reservation id (rsv_…), node hostname, or words of the detail."
    # Resolved by the action (a service, audited), never edited in the form.
    readonly_fields = ["kind", "node", "reservation", "detail", "created_at", "resolved_at"]
    actions = ["resolve"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Incident | None = None) -> bool:
        return False

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return staff_may(request.user, operations.RESOLVE)

    def row_name(self, obj: Any) -> str:
        return str(obj.pk)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.lower().startswith("rsv_"):
            return queryset.filter(reservation__public_id__startswith=term.lower()), False
        # The matching nodes first, so both halves of the OR read an index (a join inside it
        # would walk the whole table).
        nodes = list(
            Node.objects.filter(hostname__startswith=term.lower()).values_list("pk", flat=True)[
                :500
            ]
        )
        return queryset.filter(Q(node_id__in=nodes) | Q(detail__icontains=term)), False

    @admin.display(description="Detail")
    def summary(self, incident: Incident) -> str:
        return incident.detail if len(incident.detail) <= 90 else f"{incident.detail[:89]}…"

    @admin.action(description="Mark resolved", permissions=["resolve"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Incident]) -> None:
        def resolve_one(incident: Incident) -> str:
            operations.incident_resolve(incident=incident, actor=staff_actor(request))
            return str(incident.pk)

        self.run_each(request, queryset.order_by("pk"), resolve_one, done="Resolved")
