from django.contrib import admin

from .models import (
    Allocation,
    Cluster,
    DurationDiscount,
    GpuModel,
    ListPrice,
    Node,
    Region,
    Reservation,
)


@admin.register(GpuModel)
class GpuModelAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "memory_gb", "gpus_per_node", "is_active"]


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "location", "is_active"]


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ["code", "region", "gpu_model", "fabric", "is_active"]
    list_filter = ["region", "gpu_model"]
    list_select_related = ["region", "gpu_model"]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["hostname", "cluster", "gpu_count", "status", "status_reason"]
    list_filter = ["status", "cluster__region", "cluster__gpu_model"]
    search_fields = ["hostname"]
    list_select_related = ["cluster"]


@admin.register(ListPrice)
class ListPriceAdmin(admin.ModelAdmin):
    list_display = ["gpu_model", "region", "price_per_gpu_hour", "currency"]
    list_select_related = ["gpu_model", "region"]


@admin.register(DurationDiscount)
class DurationDiscountAdmin(admin.ModelAdmin):
    list_display = ["label", "min_hours", "percent"]


class AllocationInline(admin.TabularInline):
    model = Allocation
    extra = 0
    can_delete = False
    readonly_fields = ["node", "cluster", "starts_at", "ends_at", "released_at"]

    def has_add_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "organization",
        "state",
        "gpu_model",
        "region",
        "node_count",
        "starts_at",
        "ends_at",
        "total",
    ]
    list_filter = ["state", "region", "gpu_model"]
    search_fields = ["public_id", "organization__name", "organization__slug"]
    list_select_related = ["organization", "gpu_model", "region"]
    readonly_fields = [f.name for f in Reservation._meta.fields]
    inlines = [AllocationInline]

    def has_add_permission(self, request: object) -> bool:
        return False
