"""Finance in the back office: money records are read-only; changes go through billing.services.

Nobody (superusers included) adds, changes or deletes a payment, refund, invoice, ledger entry
or webhook event here. Finance refunds payments, replays webhook events and resolves flags
through actions and buttons that confirm first and report each row that failed.
"""

import json
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from backoffice.actor import staff_actor
from billing import gateway, webhooks
from billing.models import (
    BillingAccount,
    FinanceFlag,
    Invoice,
    LedgerEntry,
    ModelPrice,
    Payment,
    Refund,
    UsageHour,
    WebhookEvent,
    WebhookProcessing,
)
from billing.services import flags as finance_flags
from billing.services import prices
from billing.services import refunds as billing_refunds
from core.errors import ServiceError
from core.money import format_money
from core.staff import ReadOnlyAdmin, StaffReasonForm, staff_may

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices

PENDING_NOTE = (
    "Stripe could not be reached; the refund is saved as pending and is sent again automatically."
)
# Bulk actions work on at most this many rows at once: each row is a call to Stripe or a task.
BULK_LIMIT = 100


class IdSearch:
    """Search by an id with an exact lookup that its unique index serves, picked by the id's
    prefix (pay_, pi_, evt_, ...); anything else falls back to `search_fields`."""

    id_prefixes: dict[str, str] = {}

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        for prefix, field in self.id_prefixes.items():
            if term.startswith(prefix):
                return queryset.filter(**{field: term}), False
        return super().get_search_results(request, queryset, term)  # type: ignore[misc]


class FinanceAdmin(IdSearch, ReadOnlyAdmin):
    """Read-only, with helpers for actions that confirm first and report per row."""

    show_full_result_count = False  # a second COUNT(*) over a large table is not worth it
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter choice, on every page load

    def confirm_page(
        self,
        request: HttpRequest,
        *,
        title: str,
        intro: str,
        rows: list[list[Any]],
        headers: list[str],
        submit: str,
        action: str = "",
        queryset: QuerySet | None = None,
        form: forms.Form | None = None,
        cancel_url: str = "",
        danger: bool = False,
    ) -> TemplateResponse:
        """An intermediate page: what is about to happen to which rows, and a button."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "intro": intro,
            "headers": headers,
            "rows": rows,
            "submit": submit,
            "action": action,
            "selected": [str(pk) for pk in queryset.values_list("pk", flat=True)]
            if queryset is not None
            else [],
            "form": form,
            "cancel_url": cancel_url or reverse(self._url("changelist")),
            "danger": danger,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/billing/confirm.html", context)

    def report(
        self, request: HttpRequest, *, done: list[str], failed: list[tuple[str, str]], verb: str
    ) -> None:
        """One success message for the rows that worked, one error message per failed row."""
        if done:
            shown = ", ".join(done[:20]) + (f" and {len(done) - 20} more" if len(done) > 20 else "")
            messages.success(request, f"{verb} {len(done)}: {shown}.")
        for name, why in failed:
            messages.error(request, f"{name}: {why}")

    def too_many(self, request: HttpRequest, queryset: QuerySet) -> bool:
        if queryset.count() > BULK_LIMIT:
            messages.error(request, f"Select at most {BULK_LIMIT} rows at a time.")
            return True
        return False

    def _url(self, name: str) -> str:
        return f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}"

    def change_url(self, obj: Model) -> str:
        return reverse(self._url("change"), args=[obj.pk])

    def object_or_404(self, request: HttpRequest, object_id: str) -> Any:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("No such record.")
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        return obj


def money(amount: Decimal, currency: str) -> str:
    return format_money(amount, currency)


def org_filter_link(model_admin: FinanceAdmin, obj: Any) -> str:
    """The organization, linking to this list filtered to it (an indexed lookup)."""
    if obj.organization_id is None:
        return "—"
    url = reverse(model_admin._url("changelist"))
    return format_html(
        '<a href="{}?organization__id__exact={}" title="Only {}">{}</a>',
        url,
        obj.organization_id,
        obj.organization.name,
        obj.organization.name,
    )


# --- Billing accounts ---------------------------------------------------------------------------
@admin.register(BillingAccount)
class BillingAccountAdmin(FinanceAdmin):
    list_display = ["organization", "stripe_customer_id", "default_payment_method_id", "created_at"]
    list_select_related = ["organization"]
    id_prefixes = {"cus_": "stripe_customer_id"}
    search_fields = ["^organization__name", "=organization__slug"]
    search_help_text = "A Stripe customer id (cus_…), or the start of an organization's name."


# --- Payments and refunds -----------------------------------------------------------------------
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
                    f"{r.created_at:%Y-%m-%d %H:%M}",
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
        "reason",
        "created_by",
        "created_at",
    ]
    list_filter = ["status", "currency", ("created_at", admin.DateFieldListFilter)]
    list_select_related = ["payment__organization", "created_by"]
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

    @admin.display(description="organization", ordering="payment__organization__name")
    def organization_name(self, obj: Refund) -> str:
        return obj.payment.organization.name

    @admin.display(description="amount", ordering="amount")
    def refunded(self, obj: Refund) -> str:
        return money(obj.amount, obj.currency)


# --- Invoices -----------------------------------------------------------------------------------
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
    list_select_related = ["organization", "reservation"]
    id_prefixes = {"in_": "stripe_invoice_id", "rsv_": "reservation__public_id"}
    search_fields = ["=number", "^organization__name"]
    search_help_text = (
        "A Stripe invoice (in_…) or reservation (rsv_…) id, an invoice number, "
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


# --- Ledger -------------------------------------------------------------------------------------
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


# --- Webhook events -----------------------------------------------------------------------------
class ProcessingFilter(admin.SimpleListFilter):
    title = "processing"
    parameter_name = "processing"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("none", "Not picked up"), *WebhookProcessing.Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "none":
            return queryset.filter(processing__isnull=True)
        if self.value() in WebhookProcessing.Status.values:
            return queryset.filter(processing__status=self.value())
        return queryset


def _processing(event: WebhookEvent) -> WebhookProcessing | None:
    try:
        return event.processing
    except WebhookProcessing.DoesNotExist:
        return None


@admin.register(WebhookEvent)
class WebhookEventAdmin(FinanceAdmin):
    list_display = [
        "stripe_event_id",
        "type",
        "object_id",
        "processing_status",
        "attempts",
        "received_at",
    ]
    list_filter = [ProcessingFilter, "type", ("received_at", admin.DateFieldListFilter)]
    list_select_related = ["processing"]
    id_prefixes = {"evt_": "stripe_event_id"}
    search_fields = ["=object_id"]
    search_help_text = "An event id (evt_…) or the id of the object it is about (pi_…, ch_…)."
    actions = ["replay"]
    fieldsets = [
        (None, {"fields": ["stripe_event_id", "type", "object_id", "received_at"]}),
        (
            "Processing",
            {"fields": ["processing_status", "attempts", "last_error", "processed_at"]},
        ),
        ("Payload", {"fields": ["payload_json"]}),
    ]
    readonly_fields = [
        "processing_status",
        "attempts",
        "last_error",
        "processed_at",
        "payload_json",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("processing")

    @admin.display(description="processing", ordering="processing__status")
    def processing_status(self, obj: WebhookEvent) -> str:
        processing = _processing(obj)
        if processing is None:
            return "Not picked up"
        return processing.get_status_display()

    @admin.display(description="attempts", ordering="processing__attempts")
    def attempts(self, obj: WebhookEvent) -> int:
        processing = _processing(obj)
        return processing.attempts if processing else 0

    @admin.display(description="last error")
    def last_error(self, obj: WebhookEvent) -> str:
        processing = _processing(obj)
        return (processing.last_error if processing else "") or "—"

    @admin.display(description="processed at")
    def processed_at(self, obj: WebhookEvent) -> Any:
        processing = _processing(obj)
        return processing.processed_at if processing and processing.processed_at else "—"

    @admin.display(description="payload")
    def payload_json(self, obj: WebhookEvent) -> str:
        return format_html(
            '<pre style="white-space: pre-wrap; margin: 0">{}</pre>',
            json.dumps(obj.payload, indent=2, sort_keys=True),
        )

    def has_replay_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return staff_may(request.user, "billing.replay_webhookevent")

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/replay/",
                self.admin_site.admin_view(self.replay_view),
                name="billing_webhookevent_replay",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = extra_context or {}
        if self.has_replay_permission(request):
            extra_context["replay_url"] = reverse(
                "admin:billing_webhookevent_replay", args=[object_id]
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def _replay(self, request: HttpRequest, events: Iterable[WebhookEvent]) -> None:
        run(
            self,
            request,
            events,
            lambda event: webhooks.webhook_replay(event=event, actor=staff_actor(request)),
            name=lambda event: event.stripe_event_id,
            verb="Queued for processing again",
        )

    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = self.object_or_404(request, object_id)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            self._replay(request, [event])
            return HttpResponseRedirect(self.change_url(event))
        return self.confirm_page(
            request,
            title=f"Replay {event.stripe_event_id}",
            intro=REPLAY_INTRO,
            headers=REPLAY_HEADERS,
            rows=[replay_row(event)],
            submit="Yes, replay it",
            cancel_url=self.change_url(event),
        )

    @admin.action(description="Replay selected events…", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if self.too_many(request, queryset):
            return None
        events = list(queryset.select_related("processing").order_by("pk"))
        if request.POST.get("confirm") == "yes":
            self._replay(request, events)
            return None
        return self.confirm_page(
            request,
            title="Replay webhook events",
            intro=REPLAY_INTRO,
            headers=REPLAY_HEADERS,
            rows=[replay_row(event) for event in events],
            submit="Yes, replay them",
            action="replay",
            queryset=queryset,
        )


REPLAY_INTRO = (
    "Processing runs again for each event: the object is read from Stripe afresh and only "
    "changes that are still due are applied, so an event that was already applied changes "
    "nothing."
)
REPLAY_HEADERS = ["Event", "Type", "Object", "Processing", "Attempts"]


def replay_row(event: WebhookEvent) -> list[Any]:
    processing = _processing(event)
    return [
        event.stripe_event_id,
        event.type,
        event.object_id,
        processing.get_status_display() if processing else "Not picked up",
        processing.attempts if processing else 0,
    ]


def run(
    model_admin: FinanceAdmin,
    request: HttpRequest,
    rows: Iterable[Any],
    service: Callable[[Any], object],
    *,
    name: Callable[[Any], str],
    verb: str,
) -> None:
    """Call a service once per row; report the rows that worked and each one that failed."""
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    for row in rows:
        try:
            service(row)
        except ServiceError as exc:
            failed.append((name(row), exc.message))
        else:
            done.append(name(row))
    model_admin.report(request, done=done, failed=failed, verb=verb)


# --- Finance flags (disputes, mismatches, reconciliation differences) --------------------------
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
            f"{obj.resolved_at:%Y-%m-%d}",
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


# --- Token usage prices and hours ---------------------------------------------------------------
@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Finance sets the price of each hosted model; changes are audited."""

    show_facets = admin.ShowFacets.NEVER
    list_display = ["model", "input_per_million", "output_per_million", "currency"]
    search_fields = ["^model"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # usage already priced with it stays explainable; change it instead

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        prices.model_price_save(price=obj, actor=staff_actor(request))


@admin.register(UsageHour)
class UsageHourAdmin(FinanceAdmin):
    list_display = [
        "hour",
        "organization_link",
        "model",
        "input_tokens",
        "output_tokens",
        "priced",
        "pushed_at",
    ]
    list_filter = [("hour", admin.DateFieldListFilter)]
    list_select_related = ["organization"]
    search_fields = ["^organization__name", "=model"]
    search_help_text = "A model's name, or the start of an organization's name."

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: UsageHour) -> str:
        return org_filter_link(self, obj)

    @admin.display(description="cost", ordering="cost")
    def priced(self, obj: UsageHour) -> str:
        return money(obj.cost, obj.currency)
