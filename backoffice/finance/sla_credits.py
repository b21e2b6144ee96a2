"""Finance admin for SLA credits: read-only, each with the refunds or credit note that paid it
back (billing.services.sla writes them; nobody edits one here)."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from billing.models import LedgerEntry, Refund, SlaCredit

from .common import FinanceAdmin, money, org_filter_link


def sla_credit_link(settles: str) -> str:
    """A refund's `settles` of "sla:<pk>" as a link to that credit (no query: the pk is in
    the text, so a change list of refunds stays one query however many are SLA credits)."""
    pk = settles.removeprefix("sla:")
    if not settles.startswith("sla:") or not pk.isdigit():
        return ""
    return format_html(
        '<a href="{}">SLA credit #{}</a>', reverse("admin:billing_slacredit_change", args=[pk]), pk
    )


@admin.register(SlaCredit)
class SlaCreditAdmin(FinanceAdmin):
    list_display = [
        "public_id",
        "organization_link",
        "reservation",
        "cause",
        "credited",
        "method",
        "status",
        "granted_at",
        "created_at",
    ]
    list_filter = ["status", "cause", "method", ("created_at", admin.DateFieldListFilter)]
    list_select_related = ["organization", "reservation"]
    id_prefixes = {
        "slc_": "public_id",
        "rsv_": "reservation__public_id",
        "in_": "invoice__stripe_invoice_id",
        "cn_": "stripe_credit_note_id",
    }
    search_fields = ["^organization__name"]
    search_help_text = (
        "An SLA credit (slc_…), reservation (rsv_…), invoice (in_…) or credit note (cn_…) id, "
        "or the start of an organization's name."
    )
    fieldsets = [
        (None, {"fields": ["public_id", "organization", "reservation", "cause", "key", "status"]}),
        ("Measured", {"fields": ["minutes", "node_hours", "percent"]}),
        ("Money", {"fields": ["computed_amount", "credited", "method", "invoice"]}),
        ("Paid back", {"fields": ["stripe_credit_note_id", "refunds_table", "ledger_table"]}),
        ("Failure", {"fields": ["failure_message"]}),
        ("Times", {"fields": ["created_at", "granted_at"]}),
    ]

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: SlaCredit) -> str:
        return org_filter_link(self, obj)

    @admin.display(description="amount", ordering="amount")
    def credited(self, obj: SlaCredit) -> str:
        return money(obj.amount, obj.currency)

    @admin.display(description="the policy gave (before the cap)")
    def computed_amount(self, obj: SlaCredit) -> str:
        return money(obj.computed, obj.currency)

    @admin.display(description="refunds")
    def refunds_table(self, obj: SlaCredit) -> str:
        refunds = list(
            Refund.objects.filter(settles=obj.refund_settles)
            .select_related("payment")
            .order_by("created_at", "pk")
        )
        if not refunds:
            return "None."
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:billing_refund_change", args=[r.pk]),
                    r.public_id,
                    r.payment.public_id,
                    money(r.amount, r.currency),
                    ": ".join(filter(None, [r.get_status_display(), r.failure_message])),
                )
                for r in refunds
            ),
        )
        return format_html(
            "<table><thead><tr><th>Refund</th><th>Payment</th><th>Amount</th><th>Status</th>"
            "</tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="credit note in the ledger")
    def ledger_table(self, obj: SlaCredit) -> str:
        entry = LedgerEntry.objects.filter(sla_credit=obj).first()
        if entry is None:
            return "None (refunds book their own)." if obj.method == "refund" else "None yet."
        return format_html(
            '<a href="{}">{} {}</a>: {}',
            reverse("admin:billing_ledgerentry_change", args=[entry.pk]),
            entry.get_kind_display(),
            money(entry.amount, entry.currency),
            entry.description,
        )
