"""What every operations admin shares: intermediate pages, per-row results, row helpers."""

# Every action calls a service in capacity.operations (which checks the staff permission and
# writes the audit events); destructive ones show an intermediate page first, and a batch
# reports each row that failed with its reason. Change lists read their related rows in the
# same query (list_select_related or annotations), so their query count does not grow with
# the page.

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from capacity.models import Reservation
from core.dates import format_span
from core.errors import ServiceError
from core.staff import bulk_limit_exceeded


@dataclass(frozen=True)
class Section:
    """One block of an intermediate page: a heading, a table, and what stops it (if anything)."""

    title: SafeString | str
    headers: list[str]
    rows: list[list[Any]]
    problem: str = ""
    note: str = ""


class OperationsMixin(admin.ModelAdmin):
    """Intermediate pages and per-row reporting for the actions of an operations admin."""

    confirm_template = "admin/capacity/confirm_action.html"

    # django-stubs declares an `action_location` argument that Django 5.2 does not pass.
    def response_action(  # type: ignore[override]
        self, request: HttpRequest, queryset: QuerySet
    ) -> HttpResponse | None:
        selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
        across = request.POST.get("select_across") == "1"
        count = queryset.count() if across else len(selected)
        if bulk_limit_exceeded(request, count):
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset)

    def confirmation(
        self,
        request: HttpRequest,
        queryset: Iterable[Any],
        *,
        action: str,
        title: str,
        intro: str,
        form: forms.Form,
        sections: list[Section],
        submit: str,
    ) -> TemplateResponse:
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "opts": opts,
            "app_label": opts.app_label,
            "action": action,
            "ids": [obj.pk for obj in queryset],
            "intro": intro,
            "form": form,
            "sections": sections,
            "submit": submit,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "changelist_url": request.get_full_path(),
        }
        return TemplateResponse(request, self.confirm_template, context)

    def run_each(
        self,
        request: HttpRequest,
        objects: Iterable[Any],
        call: Callable[[Any], str],
        *,
        done: str,
    ) -> None:
        """Call the service for each object; one error message per failed row, then one
        success message listing the rows done."""
        succeeded = []
        for obj in objects:
            try:
                succeeded.append(call(obj))
            except ServiceError as exc:
                messages.error(request, self.failure(obj, exc.message))
        if succeeded:
            messages.success(request, f"{done}: {'; '.join(succeeded)}.")

    def failure(self, obj: Any, message: str) -> str:
        """ "Node east-a-n00 was not drained: …", or "Reservation rsv_…: …" when the service's
        message does not begin with the object's name. The kind of object comes first, so the
        admin's capitalized first letter falls on it and not on a hostname."""
        kind = capfirst(self.model._meta.verbose_name)
        name = self.row_name(obj)
        return (
            f"{kind} {message}" if message.startswith(f"{name} ") else f"{kind} {name}: {message}"
        )

    def row_name(self, obj: Any) -> str:
        return str(obj)


def bound_form(form_class: type[forms.Form], request: HttpRequest) -> forms.Form:
    """The action's form, bound only when its intermediate page was submitted."""
    return form_class(request.POST) if "apply" in request.POST else form_class()


def window_text(starts_at: datetime, ends_at: datetime) -> str:
    return format_span(starts_at, ends_at)


def reservation_link(reservation: Reservation) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>',
        reverse("admin:capacity_reservation_change", args=[reservation.pk]),
        reservation.public_id,
    )


class HostnameSearch:
    """Hostnames are lower case and unique: a prefix lookup reads the unique index."""

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip().lower()
        if not term:
            return queryset, False
        return queryset.filter(**{self.hostname_lookup: term}), False  # type: ignore[attr-defined]
