"""The incidents' admin: open or resolved, and marking them resolved."""

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from backoffice.actor import staff_actor
from capacity import operations
from capacity.models import Incident, Node
from core.staff import staff_may

from .common import OperationsMixin


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
