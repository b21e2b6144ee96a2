"""The staff-action kit: the staff-permission check, the reason rule and the reason form,
read-only admin pages, plain admin edits (catalog, inventory, users, groups) that land in the
audit log like services do, and service errors shown as messages."""

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from core import audit
from core.errors import NotAllowed, ServiceError

REASON_MISSING = "Say why: the reason goes into the audit log."


# --- Who may act --------------------------------------------------------------------------------
def staff_may(actor: Any, permission: str) -> bool:
    """Whether `actor` is active staff holding `app_label.codename`."""
    return bool(
        actor is not None
        and getattr(actor, "is_active", False)
        and getattr(actor, "is_staff", False)
        and actor.has_perm(permission)
    )


def require_staff_permission(actor: Any, permission: str, doing: str) -> None:
    """Raise NotAllowed unless `actor` is active staff holding `app_label.codename`."""
    if not staff_may(actor, permission):
        raise NotAllowed(f"You are not allowed to {doing}.", code="permission_denied")


# --- Reasons ------------------------------------------------------------------------------------
BULK_LIMIT = 100  # rows one admin action may take; its confirmation page posts every id


def bulk_limit_exceeded(request: HttpRequest, count: int) -> bool:
    """Tell the staff member and answer True when an action was asked for too many rows."""
    if count > BULK_LIMIT:
        messages.error(request, f"Select at most {BULK_LIMIT} rows at a time.")
        return True
    return False


def reason_clean(text: str | None, *, required: bool = True, missing: str = REASON_MISSING) -> str:
    """The reason as kept: stripped, present where `required` (else `missing` is raised), and
    refused, never cut, when longer than settings.STAFF_REASON_MAX_LENGTH."""
    reason = (text or "").strip()
    if required and not reason:
        raise ServiceError(missing, param="reason")
    limit = settings.STAFF_REASON_MAX_LENGTH
    if len(reason) > limit:
        raise ServiceError(f"Keep the reason to {limit} characters or fewer.", param="reason")
    return reason


class StaffReasonForm(forms.Form):
    """The reason an admin action asks for, checked by `reason_clean`. Subclasses say whether
    it is required, what a missing one is told and the help text; they may add fields (or be
    mixed into a ModelForm)."""

    reason_required = True
    reason_missing = REASON_MISSING
    reason_help = "Recorded in the audit log with your name."

    reason = forms.CharField(
        label="Reason", required=False, widget=forms.Textarea(attrs={"rows": 3, "cols": 60})
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["reason"]
        field.required = self.reason_required
        field.error_messages["required"] = self.reason_missing
        field.help_text = self.reason_help
        field.widget.attrs["maxlength"] = str(settings.STAFF_REASON_MAX_LENGTH)

    def clean_reason(self) -> str:
        try:
            return reason_clean(
                self.cleaned_data.get("reason"),
                required=self.reason_required,
                missing=self.reason_missing,
            )
        except ServiceError as exc:
            raise forms.ValidationError(exc.message) from None


def _plain(value: Any) -> str:
    if isinstance(value, QuerySet | list | tuple | set):
        return ", ".join(sorted(str(v) for v in value))
    return "" if value is None else str(value)


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records nobody edits in the admin: they change only through services."""

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


class AuditedAdmin(admin.ModelAdmin):
    """Records who added, changed (which fields, from what to what) or deleted a row."""

    def _organization(self, obj: Model) -> Any:
        return getattr(obj, "organization", None)

    def save_model(self, request: HttpRequest, obj: Model, form: ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        self._record(request, obj, form, change)

    def save_related(
        self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        # Many-to-many fields (a user's groups) are only saved here.
        m2m = [
            name
            for name in form.changed_data
            if name in {f.name for f in form.instance._meta.many_to_many}
        ]
        if m2m:
            audit.record(
                action=f"{form.instance._meta.model_name}.updated",
                actor=request.user,
                organization=self._organization(form.instance),
                target=form.instance,
                data={
                    "changes": {
                        name: [_plain(form.initial.get(name)), _plain(form.cleaned_data.get(name))]
                        for name in m2m
                    }
                },
            )

    def _record(self, request: HttpRequest, obj: Model, form: ModelForm, change: bool) -> None:
        m2m = {f.name for f in obj._meta.many_to_many}
        secret = {"password", "password1", "password2"}
        if change:
            fields = [name for name in form.changed_data if name not in m2m]
            if not fields:
                return
            data: dict[str, dict[str, Any]] = {
                "changes": {
                    name: ["…", "…"]
                    if name in secret
                    else [_plain(form.initial.get(name)), _plain(form.cleaned_data.get(name))]
                    for name in fields
                }
            }
        else:
            data = {
                "fields": {
                    name: _plain(value)
                    for name, value in form.cleaned_data.items()
                    if name not in secret and name not in m2m
                }
            }
        audit.record(
            action=f"{obj._meta.model_name}.{'updated' if change else 'created'}",
            actor=request.user,
            organization=self._organization(obj),
            target=obj,
            data=data,
        )

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        self._record_delete(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            self._record_delete(request, obj)
        super().delete_queryset(request, queryset)

    def _record_delete(self, request: HttpRequest, obj: Model) -> None:
        audit.record(
            action=f"{obj._meta.model_name}.deleted",
            actor=request.user,
            organization=self._organization(obj),
            target=obj,
        )


class ServiceErrorsAsMessages(admin.ModelAdmin):
    """For admins whose save goes through a service: a refusal the form's validation could not
    see coming (another change in between) rolls the save back and is shown as a message."""

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceError as exc:
            messages.error(request, exc.message)
            return HttpResponseRedirect(request.get_full_path())
