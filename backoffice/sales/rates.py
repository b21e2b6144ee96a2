"""Negotiated rates: a customer's own price for a GPU model, in a region, for a time."""

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.forms.models import construct_instance
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from backoffice.actor import staff_actor
from capacity import rates
from capacity.models import NegotiatedRate
from core.dates import format_date
from core.errors import ServiceError
from core.forms import add_service_error
from core.staff import ServiceErrorsAsMessages, StaffReasonForm

from .forms import ReasonForm

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups


class NegotiatedRateForm(StaffReasonForm, forms.ModelForm):
    reason_required = False
    reason_help = "Why this rate (kept in the audit log)."

    class Meta:
        model = NegotiatedRate
        labels = {"price_per_gpu_hour": "Price per GPU-hour", "gpu_model": "GPU model"}
        help_texts = {
            "valid_from": "UTC. Reservations starting from then get this price.",
            "valid_until": "UTC, exclusive.",
            "region": "Empty means every region; a region's own rate beats an every-region one.",
        }
        fields = [
            "organization",
            "gpu_model",
            "region",
            "price_per_gpu_hour",
            "valid_from",
            "valid_until",
        ]

    def clean(self) -> dict[str, Any]:
        """Check the rate the way the service will, with the organization's row locked: the
        admin validates and saves in one transaction, so the check still holds at the save."""
        super().clean()
        data = self.cleaned_data
        organization = data.get("organization") or (
            self.instance.organization if self.instance.pk else None
        )
        if self.errors or organization is None:
            return data
        try:
            rates.validate_rate(
                organization=organization,
                gpu_model=data["gpu_model"],
                region=data.get("region"),
                price_per_gpu_hour=data["price_per_gpu_hour"],
                valid_from=data["valid_from"],
                valid_until=data["valid_until"],
                exclude_pk=self.instance.pk,
            )
        except ServiceError as exc:
            add_service_error(self, exc)
        return data

    def _post_clean(self) -> None:
        # Fill the instance (the admin logs and redirects with it) without the model's own
        # checks, which would repeat ours in worse words; the service validates and saves.
        self.instance = construct_instance(self, self.instance, self._meta.fields)


class ValidityFilter(admin.SimpleListFilter):
    title = "validity"
    parameter_name = "validity"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("current", "In force now"), ("upcoming", "Upcoming"), ("ended", "Ended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        if self.value() == "current":
            return queryset.filter(valid_from__lte=now, valid_until__gt=now)
        if self.value() == "upcoming":
            return queryset.filter(valid_from__gt=now)
        if self.value() == "ended":
            return queryset.filter(valid_until__lte=now)
        return queryset


class NegotiatedRateAdmin(ServiceErrorsAsMessages):
    form = NegotiatedRateForm
    list_display = [
        "organization",
        "gpu_model",
        "region_label",
        "price_label",
        "valid_from",
        "valid_until",
        "validity",
        "created_by",
    ]
    list_filter = [ValidityFilter, "gpu_model", "region"]
    search_fields = ["^organization__name", "=organization__slug"]
    search_help_text = "Organization name (from the start) or exact slug."
    list_select_related = ["organization", "gpu_model", "region", "created_by"]
    autocomplete_fields = ["organization"]
    readonly_fields = ["created_by", "created_at"]
    fields = [
        "organization",
        "gpu_model",
        "region",
        "price_per_gpu_hour",
        "valid_from",
        "valid_until",
        "reason",
        "created_by",
        "created_at",
    ]
    actions = ["delete_rates"]
    show_full_result_count = False

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # ours goes through the service, row by row
        return actions

    @admin.display(description="region", ordering="region__code")
    def region_label(self, rate: NegotiatedRate) -> str:
        return rate.region.code if rate.region else "Every region"

    @admin.display(description="price / GPU-h", ordering="price_per_gpu_hour")
    def price_label(self, rate: NegotiatedRate) -> str:
        return f"{rate.price_per_gpu_hour.normalize():f}"

    @admin.display(description="in force")
    def validity(self, rate: NegotiatedRate) -> str:
        now = timezone.now()
        if rate.valid_until <= now:
            return "Ended"
        return "Now" if rate.valid_from <= now else "Upcoming"

    def save_model(
        self, request: HttpRequest, obj: NegotiatedRate, form: forms.ModelForm, change: bool
    ) -> None:
        data = form.cleaned_data
        fields = {
            "gpu_model": data["gpu_model"],
            "region": data.get("region"),
            "price_per_gpu_hour": data["price_per_gpu_hour"],
            "valid_from": data["valid_from"],
            "valid_until": data["valid_until"],
            "reason": data.get("reason", ""),
        }
        if change:
            saved = rates.negotiated_rate_update(rate=obj, actor=staff_actor(request), **fields)
        else:
            saved = rates.negotiated_rate_create(
                organization=data["organization"], actor=staff_actor(request), **fields
            )
        obj.pk, obj.created_by, obj.created_at = saved.pk, saved.created_by, saved.created_at
        obj._state.adding = False

    def get_fields(self, request: HttpRequest, obj: object = None) -> "_FieldGroups":
        fields = self.fields or []
        if obj is None:  # who made it and when are filled in by the service
            return [f for f in fields if f not in ("created_by", "created_at")]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        # A rate stays with its organization; a rate for another one is a new rate.
        return [*self.readonly_fields, "organization"] if obj is not None else self.readonly_fields

    def delete_model(self, request: HttpRequest, obj: NegotiatedRate) -> None:
        rates.negotiated_rate_delete(rate=obj, actor=staff_actor(request))

    @admin.action(description="Delete selected rates", permissions=["delete"])
    def delete_rates(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            deleted = 0
            for rate in queryset:
                try:
                    rates.negotiated_rate_delete(
                        rate=rate, actor=staff_actor(request), reason=form.cleaned_data["reason"]
                    )
                except ServiceError as exc:
                    self.message_user(request, f"{rate}: {exc.message}", messages.ERROR)
                else:
                    deleted += 1
            if deleted:
                self.message_user(
                    request,
                    f"Deleted {deleted} rate{'s' if deleted != 1 else ''}. Reservations already "
                    "made keep their prices.",
                    messages.SUCCESS,
                )
            return None
        return TemplateResponse(
            request,
            "admin/sales/action_confirm.html",
            {
                **self.admin_site.each_context(request),
                "title": "Delete negotiated rates",
                "intro": "New reservations of these organizations will be priced without these "
                "rates. Reservations already made keep their prices.",
                "button": "Delete rates",
                "danger": True,
                "form": form,
                "rows": [
                    (rate, f"{format_date(rate.valid_from)} → {format_date(rate.valid_until)}")
                    for rate in queryset
                ],
                "action": request.POST.get("action", ""),
                "select_across": request.POST.get("select_across", "0"),
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
                "opts": self.model._meta,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )


admin.site.register(NegotiatedRate, NegotiatedRateAdmin)
