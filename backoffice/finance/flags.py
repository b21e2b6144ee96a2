"""Finance admin for finance flags (disputes, mismatches, reconciliation differences)."""

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from backoffice.actor import staff_actor
from billing.models import FinanceFlag
from billing.services import flags as finance_flags
from core.dates import format_datetime
from core.staff import staff_may

from .common import FinanceAdmin, org_filter_link, run

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices


class FlagStateFilter(admin.SimpleListFilter):
    """Open flags unless asked otherwise: they are the work list."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("open", "Open"), ("resolved", "Resolved"), ("all", "All")]

    def choices(self, changelist: ChangeList) -> Iterator["_ListFilterChoices"]:
        current = self.value() or "open"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": current == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value() or "open"
        if value == "open":
            return queryset.filter(resolved_at__isnull=True)
        if value == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


class ResolutionForm(forms.Form):
    resolution = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text="What was done about it (kept on the flag and in the audit log).",
    )

    def clean_resolution(self) -> str:
        resolution = self.cleaned_data["resolution"].strip()
        if not resolution:
            raise forms.ValidationError("Say what was done about it; the resolution is kept.")
        return resolution


@admin.register(FinanceFlag)
class FinanceFlagAdmin(FinanceAdmin):
    list_display = [
        "created_at",
        "kind",
        "organization_link",
        "object",
        "short_detail",
        "state",
    ]
    list_filter = [FlagStateFilter, "kind", ("created_at", admin.DateFieldListFilter)]
    list_select_related = ["organization", "payment", "resolved_by"]
    id_prefixes = {"pay_": "payment__public_id"}
    search_fields = ["=stripe_object_id", "^organization__name"]
    search_help_text = (
        "A Stripe object id (pi_…, dp_…, in_…), a payment id (pay_…), "
        "or the start of an organization's name."
    )
    actions = ["resolve"]
    fields = [
        "kind",
        "organization",
        "payment",
        "stripe_object_id",
        "detail",
        "created_at",
        "resolved_at",
        "resolved_by",
        "resolution",
    ]

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: FinanceFlag) -> str:
        return org_filter_link(self, obj)

    @admin.display(description="object", ordering="stripe_object_id")
    def object(self, obj: FinanceFlag) -> str:
        if obj.payment is None:
            return obj.stripe_object_id
        url = reverse("admin:billing_payment_change", args=[obj.payment_id])
        return format_html(
            '{}<br><a href="{}">{}</a>', obj.stripe_object_id, url, obj.payment.public_id
        )

    @admin.display(description="detail")
    def short_detail(self, obj: FinanceFlag) -> str:
        return obj.detail if len(obj.detail) <= 160 else obj.detail[:157] + "…"

    @admin.display(description="state", ordering="resolved_at")
    def state(self, obj: FinanceFlag) -> str:
        if obj.resolved_at is None:
            return "Open"
        who = obj.resolved_by.email if obj.resolved_by else "—"
        return format_html(
            "Resolved by {} on {}<br><small>{}</small>",
            who,
            format_datetime(obj.resolved_at),
            obj.resolution,
        )

    def has_resolve_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return staff_may(request.user, "billing.resolve_financeflag")

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/resolve/",
                self.admin_site.admin_view(self.resolve_view),
                name="billing_financeflag_resolve",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = extra_context or {}
        flag = self.get_object(request, unquote(object_id))
        if self.has_resolve_permission(request) and flag is not None and not flag.resolved_at:
            extra_context["resolve_url"] = reverse(
                "admin:billing_financeflag_resolve", args=[object_id]
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def _resolve(self, request: HttpRequest, flags: Iterable[FinanceFlag], resolution: str) -> None:
        run(
            self,
            request,
            flags,
            lambda flag: finance_flags.flag_resolve(
                flag=flag, actor=staff_actor(request), resolution=resolution
            ),
            name=str,
            verb="Resolved",
        )

    def resolve_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_resolve_permission(request):
            raise PermissionDenied
        flag = self.object_or_404(request, object_id)
        form = ResolutionForm(request.POST if request.method == "POST" else None)
        if form.is_bound and form.is_valid():
            self._resolve(request, [flag], form.cleaned_data["resolution"])
            return HttpResponseRedirect(self.change_url(flag))
        return self.confirm_page(
            request,
            title=f"Resolve: {flag}",
            intro=RESOLVE_INTRO,
            headers=RESOLVE_HEADERS,
            rows=[resolve_row(flag)],
            submit="Resolve",
            form=form if form.is_bound else ResolutionForm(),
            cancel_url=self.change_url(flag),
        )

    @admin.action(description="Resolve selected flags…", permissions=["resolve"])
    def resolve(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if self.too_many(request, queryset):
            return None
        flags = list(queryset.select_related("organization", "resolved_by").order_by("pk"))
        form = ResolutionForm(request.POST if request.POST.get("confirm") == "yes" else None)
        if form.is_bound and form.is_valid():
            self._resolve(request, flags, form.cleaned_data["resolution"])
            return None
        return self.confirm_page(
            request,
            title="Resolve finance flags",
            intro=RESOLVE_INTRO,
            headers=RESOLVE_HEADERS,
            rows=[resolve_row(flag) for flag in flags],
            submit="Resolve them",
            action="resolve",
            queryset=queryset,
            form=form if form.is_bound else ResolutionForm(),
        )


RESOLVE_INTRO = "The resolution is kept on each flag and in the audit log."
RESOLVE_HEADERS = ["Kind", "Organization", "Object", "Detail", "State"]


def resolve_row(flag: FinanceFlag) -> list[Any]:
    return [
        flag.get_kind_display(),
        flag.organization.name if flag.organization else "—",
        flag.stripe_object_id,
        flag.detail,
        "Open" if flag.resolved_at is None else "Already resolved",
    ]
