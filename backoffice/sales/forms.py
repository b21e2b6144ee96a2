"""Forms of the sales actions (reason, suspension, invoice terms) and of a quote."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms

from accounts.services import organizations as account_services
from capacity import quotes
from capacity.models import GpuModel, Region
from capacity.windows import window_for
from core.errors import ServiceError
from core.forms import add_service_error
from core.staff import StaffReasonForm


# --- Action forms ---------------------------------------------------------------------------------
class ReasonForm(StaffReasonForm):
    reason_required = False
    reason_help = "Kept in the audit log."


class SuspendForm(StaffReasonForm):
    reason_missing = "Give a reason: the customer sees it and the audit log keeps it."
    reason_help = "Shown to the organization's members on every page, and kept in the audit log."


class TermsForm(ReasonForm):
    credit_limit = forms.DecimalField(
        max_digits=14,
        decimal_places=2,
        min_value=Decimal("0.00"),
        help_text="The most the organization may owe. At least its current balance.",
    )
    payment_days = forms.IntegerField(
        min_value=account_services.PAYMENT_DAYS_RANGE[0],
        max_value=account_services.PAYMENT_DAYS_RANGE[1],
        initial=30,
        help_text="Days to pay each invoice (net days).",
    )
    field_order = ["credit_limit", "payment_days", "reason"]


class QuoteForm(forms.Form):
    gpu_model = forms.ModelChoiceField(
        queryset=GpuModel.objects.filter(is_active=True), empty_label=None, label="GPU model"
    )
    region = forms.ModelChoiceField(
        queryset=Region.objects.filter(is_active=True), empty_label=None
    )
    node_count = forms.IntegerField(label="Nodes", min_value=1, initial=1)
    starts_at = forms.DateTimeField(
        label="Start (UTC)",
        help_text="On the hour.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 3600}),
    )
    duration_hours = forms.IntegerField(label="Hours", min_value=1, initial=24)
    price_per_gpu_hour = forms.DecimalField(
        label="Price per GPU-hour",
        required=False,
        max_digits=10,
        decimal_places=4,
        min_value=Decimal("0.0001"),
        help_text="Leave empty for the customer's own price (negotiated rate or list price).",
    )
    valid_days = forms.IntegerField(
        label="Valid for (days)",
        min_value=1,
        max_value=quotes.MAX_VALIDITY.days,
        initial=7,
        help_text="The nodes stay held until then (at the latest until the start).",
    )
    note = forms.CharField(
        required=False,
        max_length=quotes.NOTE_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="The customer sees this with the quote.",
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if "valid_days" in data:
            data["valid_for"] = timedelta(days=data["valid_days"])
        if "duration_hours" in data and "starts_at" in data:
            try:
                data["window"] = window_for(
                    starts_at=data["starts_at"], duration_hours=data["duration_hours"]
                )
            except ServiceError as exc:
                add_service_error(self, exc)
        return data
