"""Sales: customers, their terms, negotiated rates and quotes."""

from django.contrib import admin

from accounts.models import Membership, Organization
from capacity.models import NegotiatedRate


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "country", "tier", "status", "payment_terms", "created_at"]
    list_filter = ["tier", "status", "payment_terms", "country"]
    search_fields = ["name", "slug", "legal_name", "billing_email"]
    list_select_related = ["account_owner"]
    inlines = [MembershipInline]


@admin.register(NegotiatedRate)
class NegotiatedRateAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "gpu_model",
        "region",
        "price_per_gpu_hour",
        "valid_from",
        "valid_until",
    ]
    list_select_related = ["organization", "gpu_model", "region"]
    raw_id_fields = ["organization"]
