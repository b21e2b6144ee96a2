"""Finance admin for invoices, with an overdue filter."""

from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from billing.models import Invoice

from .common import FinanceAdmin, money, org_filter_link


class OverdueFilter(admin.SimpleListFilter):
    title = "overdue"
    parameter_name = "overdue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("yes", "Overdue"), ("no", "Not overdue")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        overdue = {"status": Invoice.Status.OPEN, "due_at__lt": timezone.now()}
        if self.value() == "yes":
            return queryset.filter(**overdue)
        if self.value() == "no":
            return queryset.exclude(**overdue)
        return queryset


@admin.register(Invoice)
class InvoiceAdmin(FinanceAdmin):
    list_display = [
        "__str__",
        "organization_link",
        "reservation",
        "extension",
        "status",
        "billed",
        "due_at",
        "overdue",
        "payment_failed",
        "paid_at",
    ]
    list_filter = [
        "status",
        OverdueFilter,
        "payment_failed",
        ("due_at", admin.DateFieldListFilter),
        ("created_at", admin.DateFieldListFilter),
    ]
    list_select_related = ["organization", "reservation", "extension"]
    id_prefixes = {
        "in_": "stripe_invoice_id",
        "rsv_": "reservation__public_id",
        "ext_": "extension__public_id",
    }
    search_fields = ["=number", "^organization__name"]
    search_help_text = (
        "A Stripe invoice (in_…), reservation (rsv_…) or extension (ext_…) id, an invoice number, "
        "or the start of an organization's name."
    )

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: Invoice) -> str:
        return org_filter_link(self, obj)

    @admin.display(description="amount", ordering="amount")
    def billed(self, obj: Invoice) -> str:
        return money(obj.amount, obj.currency)

    @admin.display(description="overdue", boolean=True)
    def overdue(self, obj: Invoice) -> bool:
        return bool(
            obj.status == Invoice.Status.OPEN and obj.due_at and obj.due_at < timezone.now()
        )
