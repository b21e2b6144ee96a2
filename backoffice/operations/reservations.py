"""The reservations' admin: filters, the event timeline, actions, and allocations."""

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import SafeString, mark_safe

from accounts.models import Organization
from backoffice.actor import staff_actor
from billing.services import extensions as billing_extensions
from capacity import operations, selectors
from capacity.models import Allocation, Extension, Reservation
from capacity.services import EXTENDABLE
from core.dates import format_datetime
from core.models import AuditEvent
from core.staff import StaffReasonForm, staff_may

from .cancellation import CancelAction
from .common import (
    HostnameSearch,
    OperationsMixin,
    Section,
    bound_form,
)

S = Reservation.State


class ExtendForm(StaffReasonForm):
    CHARGED, COMPLIMENTARY = "charged", "complimentary"
    hours = forms.IntegerField(
        label="Extend by (hours)", min_value=1, max_value=settings.CAPACITY_MAX_HOURS
    )
    mode = forms.ChoiceField(
        label="Billing",
        choices=[
            (CHARGED, "Charged: the customer pays (saved card, else on the payment page)"),
            (
                COMPLIMENTARY,
                "Complimentary: applied now for nothing (above "
                f"{settings.EXTENSION_COMPLIMENTARY_LIMIT} needs finance's refund permission)",
            ),
        ],
        initial=CHARGED,
        widget=forms.RadioSelect,
    )
    field_order = ["hours", "mode", "reason"]


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
    fields = readonly_fields = ("node", "starts_at", "ends_at", "released_at", "extension")
    ordering = ["released_at", "node__hostname"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Allocation]:
        return super().get_queryset(request).select_related("node", "extension")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ExtensionInline(admin.TabularInline):
    model = Extension
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "public_id", "hours", "state", "price", "currency", "ends_at", "hold_expires_at", "reason",
    )  # fmt: skip
    has_add_permission = AllocationInline.has_add_permission
    has_change_permission = AllocationInline.has_change_permission


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
            price = (
                "complimentary"
                if data.get("complimentary")
                else f"+{data.get('amount')} {data.get('currency', '').upper()}"
            )
            to = data.get("to", "")[:16].replace("T", " ")
            return f"Extended by {data.get('hours')} h to {to} ({price})"
        case "reservation.extended_by_staff":
            if data.get("complimentary"):
                return (
                    f"Complimentary extension by {data.get('hours')} h granted by staff "
                    f"(worth {data.get('value')} {data.get('currency', '').upper()})"
                )
            return f"Extension by {data.get('hours')} h made by staff"
        case "extension.held":
            return (
                f"Extension by {data.get('hours')} h held until paid "
                f"({data.get('amount')} {data.get('currency', '').upper()})"
            )
        case "extension.transition":
            return f"Extension by {data.get('hours')} h: {data.get('from')} → {data.get('to')}"
        case "extension.charged_by_staff":
            return f"Charged extension by {data.get('hours')} h started by staff"
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
class ReservationAdmin(CancelAction, OperationsMixin, admin.ModelAdmin):
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
    inlines = [ExtensionInline, AllocationInline]
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

    @admin.display(description="Starts", ordering="starts_at")
    def starts(self, reservation: Reservation) -> datetime:
        return reservation.starts_at

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

    @admin.action(description="Extend…", permissions=["operate"])
    def extend(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        reservations = list(
            queryset.select_related("organization", "gpu_model").order_by("starts_at", "pk")
        )
        form = bound_form(ExtendForm, request)
        if form.is_bound and form.is_valid():
            hours, reason = form.cleaned_data["hours"], form.cleaned_data["reason"]
            charged = form.cleaned_data["mode"] == ExtendForm.CHARGED

            def extend_one(r: Reservation) -> str:
                if charged:
                    started = billing_extensions.extension_charge_by_staff(
                        reservation=r,
                        actor=staff_actor(request),
                        hours=hours,
                        reason=reason,
                        attempt_token=secrets.token_urlsafe(24),
                    )
                    if started.extension.state == "paid":
                        new_end = format_datetime(started.extension.ends_at)
                        return f"{r.public_id} paid, to {new_end}"
                    return f"{r.public_id} held until paid ({started.extension.public_id})"
                extended = operations.reservation_extend(
                    reservation=r, actor=staff_actor(request), hours=hours, reason=reason
                )
                return f"{r.public_id} to {format_datetime(extended.ends_at)}"

            done = f"{'Charged' if charged else 'Complimentary'} extension by {hours} h"
            self.run_each(request, reservations, extend_one, done=done)
            return None
        return self.confirmation(
            request,
            reservations,
            action="extend",
            title="Extend reservations",
            intro=(
                "Each reservation keeps its nodes for the extra hours if nobody holds them right "
                "after its end. Charged: the hours are held and the end moves once the customer's "
                "payment succeeds. Complimentary: the end moves now, for nothing, with your "
                "reason on record."
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
        form = bound_form(StaffReasonForm, request)
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
