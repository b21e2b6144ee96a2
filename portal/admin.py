from django.contrib import admin

from .models import AuditEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records nobody edits in the admin: they change only through services."""

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "action",
        "actor_kind",
        "actor_email",
        "organization",
        "object_repr",
    ]
    list_filter = ["actor_kind", "action"]
    search_fields = ["actor_email", "object_id", "object_repr", "organization__name", "request_id"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"


# The back office's cross-app admin pages register themselves on import.
from .backoffice import sales  # noqa: E402, F401
