from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.admin import GroupAdmin
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Organization, User
from backoffice.actor import staff_actor
from core.models import AuditEvent
from core.staff import AuditedAdmin, ReadOnlyAdmin, StaffReasonForm

from .two_factor import second_factor_reset


def audit_log_url(**filters: str | int) -> str:
    """The audit log filtered, e.g. ``audit_log_url(organization=org.pk)`` or
    ``audit_log_url(object="capacity.reservation:12")``; other admin pages link here."""
    from django.utils.http import urlencode

    return f"{reverse('admin:core_auditevent_changelist')}?{urlencode(filters)}"


class _ChosenFilter(admin.SimpleListFilter):
    """A filter set by a link from another page (an organization, a user, an object): the
    sidebar shows the one chosen value with "All" to clear it, instead of listing thousands."""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        value = self.value()
        label = self.describe(value) if value else None
        return [(value, label)] if label else []

    def describe(self, value: str) -> str | None:
        raise NotImplementedError


class OrganizationFilter(_ChosenFilter):
    title = "organization"
    parameter_name = "organization"

    def describe(self, value: str) -> str | None:
        if not value.isdigit():
            return None
        return Organization.objects.filter(pk=value).values_list("name", flat=True).first()

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(organization_id=value) if value and value.isdigit() else queryset


class ActorFilter(_ChosenFilter):
    title = "actor"
    parameter_name = "actor"

    def describe(self, value: str) -> str | None:
        if not value.isdigit():
            return None
        return User.objects.filter(pk=value).values_list("email", flat=True).first()

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(actor_id=value) if value and value.isdigit() else queryset


class ObjectFilter(_ChosenFilter):
    """``?object=capacity.reservation:12``: everything that happened to one object."""

    title = "object"
    parameter_name = "object"

    def _parts(self) -> tuple[str, str] | None:
        object_type, _, object_id = (self.value() or "").partition(":")
        return (object_type, object_id) if object_type and object_id else None

    def describe(self, value: str) -> str | None:
        parts = self._parts()
        if parts is None:
            return None
        repr_ = (
            AuditEvent.objects.filter(object_type=parts[0], object_id=parts[1])
            .values_list("object_repr", flat=True)
            .first()
        )
        return f"{parts[0].split('.')[-1]} {repr_ or parts[1]}"

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        parts = self._parts()
        if parts is None:
            return queryset
        return queryset.filter(object_type=parts[0], object_id=parts[1])


class ObjectTypeFilter(admin.SimpleListFilter):
    title = "object type"
    parameter_name = "object_type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        labels = (
            AuditEvent.objects.exclude(object_type="")
            .values_list("object_type", flat=True)
            .distinct()
            .order_by("object_type")
        )
        return [(label, label.split(".")[-1]) for label in labels]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(object_type=self.value()) if self.value() else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The audit log: who did what to which object, when, from where and why. Nobody edits it."""

    list_display = [
        "created_at",
        "action",
        "actor_kind",
        "actor_email",
        "organization",
        "object_link",
        "reason_short",
        "ip_address",
    ]
    list_filter = [
        OrganizationFilter,
        ActorFilter,
        ObjectFilter,
        "actor_kind",
        ObjectTypeFilter,
        "action",
    ]
    # Prefix and exact lookups, which the indexes on these columns serve.
    search_fields = ["^actor_email", "=object_id", "=request_id", "^action", "^organization__name"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    @admin.display(description="object")
    def object_link(self, event: AuditEvent) -> str:
        if not event.object_type:
            return "—"
        app_label, _, model = event.object_type.partition(".")
        try:
            url = reverse(f"admin:{app_label}_{model}_change", args=[event.object_id])
        except NoReverseMatch:
            return f"{model} {event.object_repr}"
        return format_html('{} <a href="{}">{}</a>', model, url, event.object_repr)

    @admin.display(description="reason")
    def reason_short(self, event: AuditEvent) -> str:
        return (event.reason[:80] + "…") if len(event.reason) > 80 else event.reason


admin.site.unregister(Group)
admin.site.unregister(TOTPDevice)


@admin.register(TOTPDevice)
class StaffAuthenticatorAdmin(ReadOnlyAdmin):
    """Staff authenticators, without their keys: a lost phone is reset (the staff member sets
    up a new one at the next sign-in), never copied or edited here."""

    list_display = ["user", "name", "confirmed", "created_at", "last_used_at"]
    list_filter = ["confirmed"]
    search_fields = ["^user__email"]
    list_select_related = ["user"]
    fields = ["user", "name", "confirmed", "created_at", "last_used_at"]
    actions = ["reset"]

    def has_reset_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    @admin.action(
        description="Reset the second factor (set up again at next sign-in)", permissions=["reset"]
    )
    def reset(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        users = {device.user for device in queryset.select_related("user")}
        form = StaffReasonForm(request.POST if request.POST.get("apply") else None)
        if form.is_valid():
            reason = form.cleaned_data["reason"]
            for user in sorted(users, key=lambda u: u.email):
                second_factor_reset(user=user, actor=staff_actor(request), reason=reason)
                self.message_user(request, f"Second factor reset for {user.email}.")
            return None
        return TemplateResponse(
            request,
            "admin/portal/reset_second_factor.html",
            {
                **self.admin_site.each_context(request),
                "title": "Reset second factor",
                "opts": self.model._meta,
                "users": sorted(users, key=lambda u: u.email),
                "selected": [device.pk for device in queryset],
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "form": form,
            },
        )


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    """Staff groups: changes to who may do what are audited (the table in
    backoffice/roles.py is what the migration and seed_demo apply)."""
