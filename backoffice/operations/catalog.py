"""The catalog's admin: GPU models, list prices and duration discounts."""

from django.contrib import admin

from capacity.models import DurationDiscount, GpuModel, ListPrice
from core.staff import AuditedAdmin


# Read by everyone, edited by whoever holds the model permissions.
@admin.register(GpuModel)
class GpuModelAdmin(AuditedAdmin):
    list_display = ["name", "slug", "memory_gb", "gpus_per_node", "is_active"]


@admin.register(ListPrice)
class ListPriceAdmin(AuditedAdmin):
    list_display = ["gpu_model", "region", "price_per_gpu_hour", "currency"]
    list_select_related = ["gpu_model", "region"]


@admin.register(DurationDiscount)
class DurationDiscountAdmin(AuditedAdmin):
    list_display = ["label", "min_hours", "percent"]
