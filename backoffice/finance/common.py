"""Finance admin shared parts: the read-only base admin, id search, money and per-row runs."""

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from core.errors import ServiceError
from core.money import format_money
from core.staff import ReadOnlyAdmin, bulk_limit_exceeded

# Bulk actions work on at most this many rows at once: each row is a call to Stripe or a task.


class IdSearch:
    """Search by an id with an exact lookup that its unique index serves, picked by the id's
    prefix (pay_, pi_, evt_, ...); anything else falls back to `search_fields`."""

    id_prefixes: dict[str, str] = {}

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        for prefix, field in self.id_prefixes.items():
            if term.startswith(prefix):
                return queryset.filter(**{field: term}), False
        return super().get_search_results(request, queryset, term)  # type: ignore[misc]


class FinanceAdmin(IdSearch, ReadOnlyAdmin):
    """Read-only, with helpers for actions that confirm first and report per row.

    Money records are read-only; changes go through billing.services. Nobody (superusers
    included) adds, changes or deletes a payment, refund, invoice, ledger entry or webhook event
    here. Finance refunds payments, replays webhook events and resolves flags through actions and
    buttons that confirm first and report each row that failed.
    """

    show_full_result_count = False  # a second COUNT(*) over a large table is not worth it
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter choice, on every page load

    def confirm_page(
        self,
        request: HttpRequest,
        *,
        title: str,
        intro: str,
        rows: list[list[Any]],
        headers: list[str],
        submit: str,
        action: str = "",
        queryset: QuerySet | None = None,
        form: forms.Form | None = None,
        cancel_url: str = "",
        danger: bool = False,
    ) -> TemplateResponse:
        """An intermediate page: what is about to happen to which rows, and a button."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "intro": intro,
            "headers": headers,
            "rows": rows,
            "submit": submit,
            "action": action,
            "selected": [str(pk) for pk in queryset.values_list("pk", flat=True)]
            if queryset is not None
            else [],
            "form": form,
            "cancel_url": cancel_url or reverse(self._url("changelist")),
            "danger": danger,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/billing/confirm.html", context)

    def report(
        self, request: HttpRequest, *, done: list[str], failed: list[tuple[str, str]], verb: str
    ) -> None:
        """One success message for the rows that worked, one error message per failed row."""
        if done:
            shown = ", ".join(done[:20]) + (f" and {len(done) - 20} more" if len(done) > 20 else "")
            messages.success(request, f"{verb} {len(done)}: {shown}.")
        for name, why in failed:
            messages.error(request, f"{name}: {why}")

    def too_many(self, request: HttpRequest, queryset: QuerySet) -> bool:
        return bulk_limit_exceeded(request, queryset.count())

    def _url(self, name: str) -> str:
        return f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}"

    def change_url(self, obj: Model) -> str:
        return reverse(self._url("change"), args=[obj.pk])

    def object_or_404(self, request: HttpRequest, object_id: str) -> Any:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("No such record.")
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        return obj


def money(amount: Decimal, currency: str) -> str:
    return format_money(amount, currency)


def org_filter_link(model_admin: FinanceAdmin, obj: Any) -> str:
    """The organization, linking to this list filtered to it (an indexed lookup)."""
    if obj.organization_id is None:
        return "—"
    url = reverse(model_admin._url("changelist"))
    return format_html(
        '<a href="{}?organization__id__exact={}" title="Only {}">{}</a>',
        url,
        obj.organization_id,
        obj.organization.name,
        obj.organization.name,
    )


def run(
    model_admin: FinanceAdmin,
    request: HttpRequest,
    rows: Iterable[Any],
    service: Callable[[Any], object],
    *,
    name: Callable[[Any], str],
    verb: str,
) -> None:
    """Call a service once per row; report the rows that worked and each one that failed."""
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    for row in rows:
        try:
            service(row)
        except ServiceError as exc:
            failed.append((name(row), exc.message))
        else:
            done.append(name(row))
    model_admin.report(request, done=done, failed=failed, verb=verb)
