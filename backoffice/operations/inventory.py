"""The inventory's admin: regions, clusters (node timeline, Slurm re-sync) and nodes (drain)."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from backoffice.actor import staff_actor
from capacity import operations, selectors, timeline
from capacity.drivers.slurm import inventory as slurm_inventory
from capacity.models import Cluster, Node, Region
from core.errors import ServiceError
from core.staff import AuditedAdmin, StaffReasonForm, staff_may

from .common import (
    HostnameSearch,
    OperationsMixin,
    Section,
    bound_form,
    reservation_link,
    window_text,
)


class DrainForm(StaffReasonForm):
    flag_unswappable = forms.BooleanField(
        label="Drain anyway",
        required=False,
        help_text=(
            "Leave reservations that have no spare on the node in maintenance and open an "
            "incident for each. Without this, a node with such a reservation is not drained."
        ),
    )


def _stranded(count: int) -> str:
    if not count:
        return ""
    which = "1 reservation has" if count == 1 else f"{count} reservations have"
    return f"{which} no spare: the drain is refused unless you choose “Drain anyway”."


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
        form = bound_form(forms.Form, request)
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
        form = bound_form(DrainForm, request)
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
                    reservation_link(m.allocation.reservation),
                    m.allocation.reservation.organization.name,
                    m.allocation.reservation.get_state_display(),
                    window_text(m.starts_at, m.allocation.ends_at),
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
