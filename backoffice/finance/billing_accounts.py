"""Finance admin for billing accounts (Stripe customers)."""

from django.contrib import admin

from billing.models import BillingAccount

from .common import FinanceAdmin


@admin.register(BillingAccount)
class BillingAccountAdmin(FinanceAdmin):
    list_display = ["organization", "stripe_customer_id", "default_payment_method_id", "created_at"]
    list_select_related = ["organization"]
    id_prefixes = {"cus_": "stripe_customer_id"}
    search_fields = ["^organization__name", "=organization__slug"]
    search_help_text = "A Stripe customer id (cus_…), or the start of an organization's name."
