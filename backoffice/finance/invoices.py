"""Finance admin for invoices, with an overdue filter."""

from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from backoffice.actor import staff_actor
from billing.models import Invoice
from billing.services import invoices as billing_invoices
from core.staff import staff_may

from .common import FinanceAdmin, money, org_filter_link, run


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
        "attempts",
        "paid_at",
    ]
    actions = ["send_again"]
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

    def has_send_again_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return staff_may(request.user, billing_invoices.RETRY_PERMISSION)

    @admin.action(
        description="Send again selected invoices that never reached Stripe…",
        permissions=["send_again"],
    )
    def send_again(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if self.too_many(request, queryset):
            return None
        rows = list(queryset.select_related("reservation").order_by("pk"))
        if request.POST.get("confirm") == "yes":
            run(
                self,
                request,
                rows,
                lambda invoice: billing_invoices.invoice_retry(
                    invoice=invoice, actor=staff_actor(request)
                ),
                name=str,
                verb="Sending again",
            )
            return None
        return self.confirm_page(
            request,
            title="Send invoices again",
            intro="Each invoice's tries start over and it is created at Stripe in a moment, as "
            "the first time. Fix what made it fail first (its last error is shown).",
            headers=["Invoice", "Reservation", "Amount", "Tries", "Last error"],
            rows=[send_again_row(invoice) for invoice in rows],
            submit="Yes, send them again",
            action="send_again",
            queryset=queryset,
        )


def send_again_row(invoice: Invoice) -> list[Any]:
    return [
        str(invoice),
        invoice.reservation.public_id,
        money(invoice.amount, invoice.currency),
        invoice.attempts,
        invoice.last_error or "—",
    ]
