"""Read-only views of the money records; changes go through the billing services."""

from django.contrib import admin

from portal.admin import ReadOnlyAdmin

from .models import (
    BillingAccount,
    FinanceFlag,
    Invoice,
    LedgerEntry,
    Payment,
    Refund,
    WebhookEvent,
    WebhookProcessing,
)


@admin.register(BillingAccount)
class BillingAccountAdmin(ReadOnlyAdmin):
    list_display = ["organization", "stripe_customer_id", "default_payment_method_id", "created_at"]
    list_select_related = ["organization"]
    search_fields = ["organization__name", "stripe_customer_id"]


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = [
        "public_id",
        "organization",
        "reservation",
        "status",
        "amount",
        "amount_refunded",
        "currency",
        "flagged",
        "created_at",
    ]
    list_filter = ["status", "flagged", "currency"]
    list_select_related = ["organization", "reservation"]
    search_fields = [
        "public_id",
        "stripe_payment_intent_id",
        "organization__name",
        "reservation__public_id",
    ]


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "payment", "amount", "currency", "status", "reason", "created_at"]
    list_filter = ["status"]
    list_select_related = ["payment"]
    search_fields = ["public_id", "stripe_refund_id", "payment__public_id"]


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = [
        "number",
        "organization",
        "reservation",
        "status",
        "amount",
        "currency",
        "due_at",
        "payment_failed",
    ]
    list_filter = ["status", "payment_failed"]
    list_select_related = ["organization", "reservation"]
    search_fields = ["number", "stripe_invoice_id", "organization__name"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "organization", "kind", "amount", "currency", "description"]
    list_filter = ["kind", "currency"]
    list_select_related = ["organization"]
    search_fields = ["organization__name", "description"]


class ProcessingInline(admin.StackedInline):
    model = WebhookProcessing
    can_delete = False
    readonly_fields = ["status", "attempts", "last_error", "processed_at", "updated_at"]


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["stripe_event_id", "type", "object_id", "received_at"]
    list_filter = ["type"]
    search_fields = ["stripe_event_id", "object_id"]
    inlines = [ProcessingInline]


@admin.register(FinanceFlag)
class FinanceFlagAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "kind", "organization", "stripe_object_id", "resolved_at"]
    list_filter = ["kind", "resolved_at"]
    list_select_related = ["organization"]
    search_fields = ["stripe_object_id", "detail", "organization__name"]
