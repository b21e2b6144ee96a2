import secrets
from collections.abc import Callable
from typing import Any, cast

from django import forms
from django.conf import settings

from core.errors import ServiceError

from .catalog_choices import UNKNOWN_GPU_MODEL, UNKNOWN_REGION
from .models import GpuModel, Region
from .windows import Window, validate_node_count, window_for


class OfferingSearchForm(forms.Form):
    """The fields offerings are searched and reservations made with (portal and API alike)."""

    gpu_model = forms.ModelChoiceField(
        queryset=GpuModel.objects.filter(is_active=True),
        to_field_name="slug",
        empty_label=None,
        label="GPU",
        error_messages={"invalid_choice": UNKNOWN_GPU_MODEL},
    )
    region = forms.ModelChoiceField(
        queryset=Region.objects.filter(is_active=True),
        to_field_name="code",
        required=False,
        empty_label="Any region",
        error_messages={"invalid_choice": UNKNOWN_REGION},
    )
    node_count = forms.IntegerField(
        label="Nodes",
        initial=1,
        help_text="8 GPUs per node.",
        error_messages={"invalid": "Give the number of nodes as a whole number."},
    )
    starts_at = forms.DateTimeField(
        label="Start (UTC)",
        required=False,
        help_text="On a whole hour in UTC. Leave empty to start as soon as it is paid.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 3600}),
        error_messages={"invalid": "Give the start as a date and time, e.g. 2026-12-01T09:00Z."},
    )
    duration_hours = forms.IntegerField(
        label="Hours",
        initial=24,
        help_text=f"1 hour to {settings.CAPACITY_MAX_HOURS // 24} days.",
        error_messages={"invalid": "Give the duration in whole hours."},
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if "node_count" in data:
            self._check("node_count", validate_node_count, data["node_count"])
        if "duration_hours" in data and "starts_at" not in self.errors:
            window = self._check(
                None,
                lambda _: window_for(
                    starts_at=data.get("starts_at"), duration_hours=data["duration_hours"]
                ),
                None,
            )
            if window is not None:
                data["window"] = window
        return data

    def _check(
        self, field: str | None, check: Callable[[Any], Window | None], value: object
    ) -> Window | None:
        try:
            return check(value)
        except ServiceError as exc:
            # The service's code travels with the message: the API answers with it.
            error = forms.ValidationError(exc.message, code=exc.code)
            self.add_error(exc.param if exc.param in self.fields else field, error)
            return None


class CalendarForm(forms.Form):
    """What the availability calendar shows: every field optional, a bad value falls back to its
    default (a link kept from a search never turns into an error page)."""

    gpu_model = forms.ModelChoiceField(
        queryset=GpuModel.objects.filter(is_active=True),
        to_field_name="slug",
        required=False,
        empty_label=None,
        label="GPU",
    )
    region = forms.ModelChoiceField(
        queryset=Region.objects.filter(is_active=True),
        to_field_name="code",
        required=False,
        empty_label=None,
    )
    node_count = forms.IntegerField(
        label="Nodes", required=False, min_value=1, max_value=settings.CAPACITY_MAX_NODES
    )
    duration_hours = forms.IntegerField(
        required=False,
        min_value=settings.CAPACITY_MIN_HOURS,
        max_value=settings.CAPACITY_MAX_HOURS,
        widget=forms.HiddenInput,
    )
    week = forms.DateField(required=False, widget=forms.HiddenInput)

    def value(self, name: str) -> Any:
        """The field's cleaned value, or None where it was missing or invalid."""
        self.is_valid()
        return self.cleaned_data.get(name)


class ReserveForm(OfferingSearchForm):
    request_token = forms.CharField(widget=forms.HiddenInput, max_length=64)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        region = cast(forms.ModelChoiceField, self.fields["region"])
        region.required = True
        region.empty_label = None
        region.error_messages["required"] = "Choose a region."
        if not self.is_bound:
            self.initial.setdefault("request_token", new_request_token())


def new_request_token() -> str:
    return secrets.token_urlsafe(24)


class ExtendForm(forms.Form):
    hours = forms.IntegerField(min_value=1, label="Extra hours", initial=24)


class CancelForm(forms.Form):
    reason = forms.CharField(
        required=False,
        max_length=500,  # capacity.services.CUSTOMER_REASON_MAX
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Why are you canceling?",
    )
