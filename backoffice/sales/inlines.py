"""Read-only inlines of an organization: its members and API keys."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import ApiKey, Membership
from core.dates import format_date, format_datetime


class _ReadOnlyInline(admin.TabularInline):
    template = "admin/sales/readonly_tabular.html"
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class MembershipInline(_ReadOnlyInline):
    """Members join by invitation in the portal; here they are only listed."""

    model = Membership
    fields = readonly_fields = ("user", "user_name", "role", "created_at")
    verbose_name_plural = "members"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("user")

    @admin.display(description="name")
    def user_name(self, membership: Membership) -> str:
        return membership.user.full_name


class ApiKeyInline(_ReadOnlyInline):
    """Keys without their secrets (only a digest is stored anyway)."""

    model = ApiKey
    fields = readonly_fields = (
        "name",
        "prefix",
        "scopes",
        "created_by",
        "created_at",
        "state",
        "last_used_at",
    )
    verbose_name_plural = "API keys"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("created_by")

    @admin.display(description="key")
    def prefix(self, key: ApiKey) -> str:
        return f"hbk_{key.public_id}_…"

    @admin.display(description="state")
    def state(self, key: ApiKey) -> str:
        now = timezone.now()
        if key.revoked_at is not None and key.revoked_at <= now:
            return f"Revoked {format_date(key.revoked_at)}"
        if key.expires_at is not None and key.expires_at <= now:
            return f"Expired {format_date(key.expires_at)}"
        if key.revoked_at is not None:
            return f"Rotated, works until {format_datetime(key.revoked_at)}"
        return "Active"
