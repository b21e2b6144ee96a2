"""Finance admin for ledger entries."""

from django.contrib import admin

from billing.models import LedgerEntry

from .common import FinanceAdmin, money, org_filter_link


@admin.register(LedgerEntry)
class LedgerEntryAdmin(FinanceAdmin):
    list_display = ["created_at", "organization_link", "kind", "signed_amount", "description"]
    list_filter = ["kind", "currency", ("created_at", admin.DateFieldListFilter)]
    list_select_related = ["organization"]
    id_prefixes = {
        "pay_": "payment__public_id",
        "ref_": "refund__public_id",
        "rsv_": "reservation__public_id",
        "in_": "invoice__stripe_invoice_id",
    }
    search_fields = ["^organization__name", "=organization__slug"]
    search_help_text = (
        "A payment (pay_…), refund (ref_…), reservation (rsv_…) or invoice (in_…) id, "
        "or the start of an organization's name."
    )

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: LedgerEntry) -> str:
        return org_filter_link(self, obj)

    @admin.display(description="amount", ordering="amount")
    def signed_amount(self, obj: LedgerEntry) -> str:
        return money(obj.amount, obj.currency)
