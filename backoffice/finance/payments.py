"""Finance admin for payments and refunds: refund one payment in part, or many in full."""

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from backoffice.actor import staff_actor
from billing import gateway
from billing.models import Payment, Refund
from billing.services import refunds as billing_refunds
from core.dates import format_datetime
from core.errors import ServiceError
from core.staff import StaffReasonForm, staff_may

from .common import FinanceAdmin, money, org_filter_link
from .sla_credits import sla_credit_link

PENDING_NOTE = (
    "Stripe could not be reached; the refund is saved as pending and is sent again automatically."
)


class RefundReasonForm(StaffReasonForm):
    reason_missing = "Say why the money goes back; the reason is kept."
    reason_help = "Kept with each refund and in the audit log."


class AmountForm(RefundReasonForm):
    reason_help = "Kept with the refund and in the audit log."

    amount = forms.CharField(
        max_length=20,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )
    field_order = ["amount", "reason"]

    def clean_amount(self) -> Decimal:
        text = self.cleaned_data["amount"].strip()
        try:
            return Decimal(text)
        except InvalidOperation:
            raise forms.ValidationError("Enter the amount as a number, like 120.00.") from None


class FlaggedFilter(admin.SimpleListFilter):
    title = "flagged"
    parameter_name = "flagged"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("yes", "Flagged"), ("no", "Not flagged")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(flagged=self.value() == "yes")
        return queryset


@admin.register(Payment)
class PaymentAdmin(FinanceAdmin):
    list_display = [
        "public_id",
        "organization_link",
        "reservation",
        "state",
        "paid",
        "refunded",
        "card",
        "created_at",
    ]
    list_filter = ["status", FlaggedFilter, "currency", ("created_at", admin.DateFieldListFilter)]
    list_select_related = ["organization", "reservation"]
    id_prefixes = {
        "pay_": "public_id",
        "pi_": "stripe_payment_intent_id",
        "rsv_": "reservation__public_id",
    }
    search_fields = ["^organization__name", "=organization__slug"]
    search_help_text = (
        "A payment (pay_…), PaymentIntent (pi_…) or reservation (rsv_…) id, "
        "or the start of an organization's name."
    )
    actions = ["refund_in_full"]
    fieldsets = [
        (None, {"fields": ["public_id", "organization", "reservation", "status", "created_by"]}),
        ("Money", {"fields": ["paid", "refunded", "can_refund", "stripe_payment_intent_id"]}),
        ("Refunds", {"fields": ["refunds_table"]}),
        ("Card", {"fields": ["card_brand", "card_last4", "keep_card", "failure_message"]}),
        ("Finance", {"fields": ["flagged", "flag_reason"]}),
        ("Times", {"fields": ["created_at", "succeeded_at", "updated_at"]}),
    ]

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: Payment) -> str:
        return org_filter_link(self, obj)

    @admin.display(description="paid", ordering="amount")
    def paid(self, obj: Payment) -> str:
        return money(obj.amount, obj.currency)

    @admin.display(description="refunded", ordering="amount_refunded")
    def refunded(self, obj: Payment) -> str:
        return money(obj.amount_refunded, obj.currency) if obj.amount_refunded else "—"

    @admin.display(description="card")
    def card(self, obj: Payment) -> str:
        if not obj.card_last4:
            return "—"
        return format_html(
            '<span style="white-space: nowrap">{} ·{}</span>', obj.card_brand, obj.card_last4
        )

    @admin.display(description="status", ordering="status")
    def state(self, obj: Payment) -> str:
        if not obj.flagged:
            return obj.get_status_display()
        return format_html(
            '{} <strong title="{}" style="color: var(--error-fg)">· flagged</strong>',
            obj.get_status_display(),
            obj.flag_reason,
        )

    @admin.display(description="can still be refunded")
    def can_refund(self, obj: Payment) -> str:
        if obj.status not in Payment.RECEIVED:
            return "— (not paid)"
        position = billing_refunds.refund_position_for_payment(obj)
        text = money(position.refundable, obj.currency)
        if position.pending:
            text += f" ({money(position.pending, obj.currency)} on its way)"
        return text

    @admin.display(description="refunds")
    def refunds_table(self, obj: Payment) -> str:
        refunds = list(obj.refunds.select_related("created_by").order_by("created_at", "pk"))
        if not refunds:
            return "None yet."
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td></tr>",
            (
                (
                    reverse("admin:billing_refund_change", args=[r.pk]),
                    r.public_id,
                    money(r.amount, r.currency),
                    ": ".join(filter(None, [r.get_status_display(), r.failure_message])),
                    r.reason,
                    r.created_by.email if r.created_by else "system",
                    format_datetime(r.created_at),
                )
                for r in refunds
            ),
        )
        return format_html(
            "<table><thead><tr><th>Refund</th><th>Amount</th><th>Status</th><th>Reason</th>"
            "<th>By</th><th>At (UTC)</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def has_issue_refund_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return staff_may(request.user, "billing.issue_refund")

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/refund/",
                self.admin_site.admin_view(self.refund_view),
                name="billing_payment_refund",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = extra_context or {}
        payment = self.get_object(request, unquote(object_id))
        if (
            self.has_issue_refund_permission(request)
            and payment is not None
            and payment.status in Payment.RECEIVED
            and payment.refundable > 0
        ):
            extra_context["refund_url"] = reverse("admin:billing_payment_refund", args=[object_id])
        return super().change_view(request, object_id, form_url, extra_context)

    def refund_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Refund part of one payment: a form, then a confirmation, then the refund."""
        if not self.has_issue_refund_permission(request):
            raise PermissionDenied
        payment = self.object_or_404(request, object_id)
        position = billing_refunds.refund_position_for_payment(payment)
        form = AmountForm(
            request.POST or None, initial={"amount": position.refundable, "reason": ""}
        )
        confirming = False
        if request.method == "POST" and form.is_valid():
            amount, reason = form.cleaned_data["amount"], form.cleaned_data["reason"]
            try:
                billing_refunds.refund_check(
                    payment=payment, amount=amount, reason=reason, actor=staff_actor(request)
                )
            except ServiceError as exc:
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
            else:
                if request.POST.get("confirm") != "yes":
                    confirming = True
                else:
                    return self._refund(request, payment, amount, reason)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": payment,
            "title": f"Refund {payment.public_id}",
            "position": position,
            "paid": money(position.paid, payment.currency),
            "refunded": money(position.refunded, payment.currency),
            "pending": money(position.pending, payment.currency) if position.pending else "",
            "refundable": money(position.refundable, payment.currency),
            "form": form,
            "confirming": confirming,
            "amount_text": money(form.cleaned_data["amount"], payment.currency)
            if confirming
            else "",
            "change_url": self.change_url(payment),
            "refundable_now": payment.status == Payment.Status.SUCCEEDED
            and position.refundable > 0,
        }
        return TemplateResponse(request, "admin/billing/payment/refund.html", context)

    def _refund(
        self, request: HttpRequest, payment: Payment, amount: Decimal, reason: str
    ) -> HttpResponse:
        try:
            refund = billing_refunds.staff_refund_issue(
                payment=payment, amount=amount, reason=reason, actor=staff_actor(request)
            )
        except gateway.GatewayUnavailable:
            messages.warning(request, PENDING_NOTE)
        except gateway.PaymentError as exc:
            messages.error(
                request, f"Stripe refused the refund: {exc.message} It is marked failed."
            )
        except ServiceError as exc:  # the payment changed since the confirmation page
            messages.error(request, exc.message)
        else:
            if refund.status == Refund.Status.SUCCEEDED:
                messages.success(
                    request,
                    f"Refunded {money(refund.amount, refund.currency)} of {payment.public_id} "
                    f"({refund.public_id}).",
                )
            else:
                messages.error(request, f"Stripe reports refund {refund.public_id} as failed.")
        return HttpResponseRedirect(self.change_url(payment))

    @admin.action(description="Refund selected payments in full…", permissions=["issue_refund"])
    def refund_in_full(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if self.too_many(request, queryset):
            return None
        payments = list(queryset.select_related("organization").order_by("pk"))
        form = RefundReasonForm(request.POST if request.POST.get("confirm") == "yes" else None)
        if form.is_bound and form.is_valid():
            done: list[str] = []
            failed: list[tuple[str, str]] = []
            for payment in payments:
                amount = billing_refunds.refund_position_for_payment(payment).refundable
                if amount == 0 and payment.status in Payment.RECEIVED:
                    failed.append((payment.public_id, "Nothing is left to refund."))
                    continue
                try:
                    refund = billing_refunds.staff_refund_issue(
                        payment=payment,
                        amount=amount,
                        reason=form.cleaned_data["reason"],
                        actor=staff_actor(request),
                    )
                except gateway.GatewayUnavailable:
                    failed.append((payment.public_id, PENDING_NOTE))
                    continue
                except ServiceError as exc:
                    failed.append((payment.public_id, exc.message))
                    continue
                if refund.status == Refund.Status.SUCCEEDED:
                    done.append(f"{payment.public_id} ({money(amount, payment.currency)})")
                else:
                    failed.append((payment.public_id, "Stripe reports the refund as failed."))
            self.report(request, done=done, failed=failed, verb="Refunded")
            return None
        rows = []
        for payment in payments:
            position = billing_refunds.refund_position_for_payment(payment)
            rows.append(
                [
                    payment.public_id,
                    payment.organization.name,
                    payment.get_status_display(),
                    money(position.paid, payment.currency),
                    money(position.refunded + position.pending, payment.currency),
                    money(position.refundable, payment.currency)
                    if payment.status in Payment.RECEIVED
                    else "cannot be refunded",
                ]
            )
        return self.confirm_page(
            request,
            title="Refund payments in full",
            intro="Each payment below is refunded by what is left of it, to the card it came "
            "from. This cannot be undone.",
            headers=["Payment", "Organization", "Status", "Paid", "Refunded", "Will refund"],
            rows=rows,
            submit="Yes, refund them",
            action="refund_in_full",
            queryset=queryset,
            form=form if form.is_bound else RefundReasonForm(),
            danger=True,
        )


@admin.register(Refund)
class RefundAdmin(FinanceAdmin):
    list_display = [
        "public_id",
        "payment",
        "organization_name",
        "refunded",
        "status",
        "settles_what",
        "reason",
        "created_by",
        "created_at",
    ]
    list_filter = ["status", "currency", ("created_at", admin.DateFieldListFilter)]
    list_select_related = ["payment__organization", "created_by"]
    readonly_fields = ["settles_what"]
    id_prefixes = {
        "ref_": "public_id",
        "re_": "stripe_refund_id",
        "pyr_": "stripe_refund_id",
        "pay_": "payment__public_id",
        "pi_": "payment__stripe_payment_intent_id",
    }
    search_fields = ["^payment__organization__name"]
    search_help_text = (
        "A refund (ref_…, re_…), payment (pay_…) or PaymentIntent (pi_…) id, "
        "or the start of an organization's name."
    )

    @admin.display(description="settles")
    def settles_what(self, obj: Refund) -> str:
        """What a refund the system made is for: the cancellation, the failure, or a link to
        the SLA credit (its "sla:<pk>")."""
        if obj.settles.startswith("sla:"):
            return sla_credit_link(obj.settles)
        return obj.get_settles_display() if obj.settles else "—"

    @admin.display(description="organization", ordering="payment__organization__name")
    def organization_name(self, obj: Refund) -> str:
        return obj.payment.organization.name

    @admin.display(description="amount", ordering="amount")
    def refunded(self, obj: Refund) -> str:
        return money(obj.amount, obj.currency)
