"""Organizations for sales: the list, the change form, terms and suspension actions, quotes."""

# Every change goes through a service (accounts.services, billing.services.terms, capacity.rates,
# capacity.quotes) that checks the staff member's permission and records an audit event; the
# admin only collects input. Actions that take something away (suspending, closing the credit
# line, deleting rates) show a confirmation page first, and report each row that failed and why.
# Change lists read one page of rows in a fixed number of queries: spend and member counts are
# subqueries, related rows are joined.

from collections.abc import Callable, Iterable
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import (
    Count,
    DecimalField,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils.html import format_html

from accounts.models import Membership, Organization
from accounts.services import organizations as account_services
from backoffice.actor import staff_actor
from billing import selectors as billing_selectors
from billing.models import LedgerEntry
from billing.services import terms
from capacity import limits, quotes
from capacity.services import SoldOut
from core.dates import format_datetime
from core.errors import ServiceError
from core.forms import add_service_error
from core.money import format_money
from core.staff import ServiceErrorsAsMessages, staff_may

from .filters import CountryFilter, ReviewFilter, SpendFilter
from .forms import QuoteForm, ReasonForm, SuspendForm, TermsForm
from .inlines import ApiKeyInline, MembershipInline

# What the organization was billed: charges and token usage, less credits (billing's spend).
SPEND_KINDS = (LedgerEntry.Kind.CHARGE, LedgerEntry.Kind.CREDIT, LedgerEntry.Kind.USAGE)
MONEY = DecimalField(max_digits=14, decimal_places=2)


def _spend() -> Coalesce:
    total = (
        LedgerEntry.objects.filter(organization=OuterRef("pk"), kind__in=SPEND_KINDS)
        .order_by()
        .values("organization")
        .annotate(total=Sum("amount"))
        .values("total")[:1]
    )
    return Coalesce(Subquery(total, output_field=MONEY), Value(Decimal("0.00")), output_field=MONEY)


def _members() -> Coalesce:
    count = (
        Membership.objects.filter(organization=OuterRef("pk"))
        .order_by()
        .values("organization")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    return Coalesce(Subquery(count, output_field=IntegerField()), Value(0))


# --- Organizations ------------------------------------------------------------------------------
Outcome = Callable[[Organization], object]


class OrganizationAdmin(ServiceErrorsAsMessages):
    list_display = [
        "name",
        "tier",
        "status_label",
        "terms_label",
        "spend_label",
        "member_count",
        "owner_label",
        "review_label",
    ]
    list_filter = [
        "tier",
        "status",
        "payment_terms",
        CountryFilter,
        ("account_owner", admin.RelatedOnlyFieldListFilter),
        SpendFilter,
        ReviewFilter,
    ]
    # Prefix lookups: on PostgreSQL an UPPER(...) pattern index serves each (accounts 0005).
    search_fields = ["^name", "^slug", "^legal_name", "^billing_email"]
    search_help_text = "Name, slug, legal name or billing e-mail, from the start."
    list_select_related = ["account_owner"]
    list_per_page = 50
    show_full_result_count = False
    ordering = ["name"]
    inlines = [MembershipInline, ApiKeyInline]
    change_form_template = "admin/sales/organization_change_form.html"
    readonly_fields = [
        "slug",
        "status",
        "suspended_reason",
        "payment_terms",
        "payment_days",
        "credit_limit",
        "balance",
        "currency",
        "is_platform",
        "reviewed_at",
        "reviewed_by",
        "created_at",
        "tier_limits",
    ]
    fieldsets = [
        (None, {"fields": ["name", "slug", "legal_name", "country", "billing_email", "tax_id"]}),
        ("Address", {"fields": ["address"], "classes": ["collapse"]}),
        ("Sales", {"fields": ["tier", "account_owner", "reviewed_at", "reviewed_by"]}),
        (
            "Capacity limits",
            {
                "fields": [*limits.OVERRIDE_FIELDS, "tier_limits"],
                "description": "Raise (or lower) the tier's limits for this customer; blank "
                "keeps the tier's. Each change is audited.",
            },
        ),
        (
            "Terms and status",
            {
                "fields": [
                    "status",
                    "suspended_reason",
                    "payment_terms",
                    "payment_days",
                    "credit_limit",
                    "balance",
                    "currency",
                    "is_platform",
                    "created_at",
                ],
                "description": "Changed only by the actions on the organization list (approve "
                "invoice terms, card terms, suspend, reactivate), so each change is audited.",
            },
        ),
    ]
    actions = [
        "approve_invoice_terms",
        "switch_to_card_terms",
        "suspend",
        "reactivate",
        "mark_reviewed",
    ]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Organization], search_term: str
    ) -> tuple[QuerySet[Organization], bool]:
        """Django matches each word of the search at the start of some field, so "Acme
        Robotics" found nothing ("Robotics" starts no field). A name or legal name that starts
        with the whole search, spaces and all, matches too (the same prefix indexes serve it)."""
        found, duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if " " in term:
            whole = queryset.filter(Q(name__istartswith=term) | Q(legal_name__istartswith=term))
            found = found | whole
        return found, duplicates

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(spend=_spend(), members=_members())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # customers sign up in the portal

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # an organization with money records is kept; suspend it instead

    def has_approve_terms_permission(self, request: HttpRequest) -> bool:
        return staff_may(request.user, "accounts.approve_terms")

    def has_suspend_organization_permission(self, request: HttpRequest) -> bool:
        return staff_may(request.user, "accounts.suspend_organization")

    def has_review_organization_permission(self, request: HttpRequest) -> bool:
        return staff_may(request.user, "accounts.review_organization")

    # Columns
    @admin.display(description="status", ordering="status")
    def status_label(self, org: Organization) -> str:
        if org.is_active:
            return "Active"
        return format_html('<strong style="color:#ba2121">{}</strong>', "Suspended")

    @admin.display(description="terms", ordering="payment_terms")
    def terms_label(self, org: Organization) -> str:
        if not org.on_invoice_terms:
            return "Card"
        return f"Net {org.payment_days}, limit {format_money(org.credit_limit, org.currency)}"

    @admin.display(description="spend", ordering="spend")
    def spend_label(self, org: Organization) -> str:
        return format_money(org.spend, org.currency)  # type: ignore[attr-defined]

    @admin.display(description="owner", ordering="account_owner__email")
    def owner_label(self, org: Organization) -> str:
        return org.account_owner.get_short_name() if org.account_owner else "—"

    @admin.display(description="members", ordering="members")
    def member_count(self, org: Organization) -> int:
        return org.members  # type: ignore[attr-defined]

    @admin.display(description="reviewed", ordering="reviewed_at")
    def review_label(self, org: Organization) -> str:
        return format_datetime(org.reviewed_at) if org.reviewed_at else "Waiting"

    @admin.display(description="balance owed")
    def balance(self, org: Organization) -> str:
        return format_money(billing_selectors.balance_for_org(org), org.currency)

    @admin.display(description="tier's limits")
    def tier_limits(self, org: Organization) -> str:
        tier = settings.CAPACITY_LIMITS.get(org.tier, {})
        return "; ".join(
            f"{label}: {tier.get(name) if tier.get(name) is not None else 'none'}"
            for name, (_, label) in limits.OVERRIDES.items()
        )

    # The change form: details, tier, account owner and limits, through the services
    def save_model(
        self, request: HttpRequest, obj: Organization, form: forms.ModelForm, change: bool
    ) -> None:
        editable = account_services.STAFF_EDITABLE
        changes = {name: form.cleaned_data[name] for name in form.changed_data if name in editable}
        if changes:
            account_services.organization_staff_update(
                organization=obj, actor=staff_actor(request), changes=changes
            )
        caps = {n: form.cleaned_data[n] for n in form.changed_data if n in limits.OVERRIDE_FIELDS}
        if caps:
            limits.organization_limits_set(
                organization=obj, actor=staff_actor(request), changes=caps
            )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        org = Organization.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        context = dict(extra_context or {})
        if org is not None:
            context["related_links"] = related_links(request, org)
            context["may_quote"] = staff_may(request.user, "capacity.create_quote")
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:object_id>/quote/",
                self.admin_site.admin_view(self.quote_view),
                name="accounts_organization_quote",
            ),
            *super().get_urls(),
        ]

    # Actions
    def _each(
        self,
        request: HttpRequest,
        queryset: Iterable[Organization],
        apply: Outcome,
        done: str,
    ) -> None:
        """Apply to every row; one error message per row that failed, one summary for the rest."""
        succeeded = 0
        for org in queryset:
            try:
                apply(org)
            except ServiceError as exc:
                self.message_user(request, f"{org.name}: {exc.message}", messages.ERROR)
            else:
                succeeded += 1
        if succeeded:
            noun = "organization" if succeeded == 1 else "organizations"
            self.message_user(request, f"{done} {succeeded} {noun}.", messages.SUCCESS)

    def _confirm(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        *,
        form: forms.Form,
        title: str,
        intro: str,
        button: str,
        danger: bool = False,
        rows: list[tuple[Organization, str]] | None = None,
    ) -> TemplateResponse:
        return TemplateResponse(
            request,
            "admin/sales/action_confirm.html",
            {
                **self.admin_site.each_context(request),
                "title": title,
                "intro": intro,
                "button": button,
                "danger": danger,
                "form": form,
                "rows": rows if rows is not None else [(org, "") for org in queryset],
                "action": request.POST.get("action", ""),
                "select_across": request.POST.get("select_across", "0"),
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
                "opts": self.model._meta,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )

    @admin.action(
        description="Approve invoice terms (credit limit, payment days)",
        permissions=["approve_terms"],
    )
    def approve_invoice_terms(
        self, request: HttpRequest, queryset: QuerySet
    ) -> TemplateResponse | None:
        form = TermsForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            data = form.cleaned_data
            self._each(
                request,
                queryset,
                lambda org: terms.invoice_terms_approve(
                    organization=org,
                    actor=staff_actor(request),
                    credit_limit=data["credit_limit"],
                    payment_days=data["payment_days"],
                    reason=data["reason"],
                ),
                "Invoice terms approved for",
            )
            return None
        balances = _balances(queryset)
        rows = [
            (org, _terms_summary(org, balances.get(org.pk, Decimal("0.00")))) for org in queryset
        ]
        return self._confirm(
            request,
            queryset,
            form=form,
            title="Approve invoice terms",
            intro="These organizations will be invoiced net the days below, up to the credit "
            "limit, and their reservations confirmed without paying upfront. The limit must "
            "be at least what each one owes now.",
            button="Approve invoice terms",
            rows=rows,
        )

    @admin.action(
        description="Switch to card terms (closes the credit line)", permissions=["approve_terms"]
    )
    def switch_to_card_terms(
        self, request: HttpRequest, queryset: QuerySet
    ) -> TemplateResponse | None:
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            self._each(
                request,
                queryset,
                lambda org: terms.card_terms_set(
                    organization=org, actor=staff_actor(request), reason=reason
                ),
                "Switched to card terms:",
            )
            return None
        return self._confirm(
            request,
            queryset,
            form=form,
            title="Switch to card terms",
            intro="These organizations will have to pay each reservation upfront by card; their "
            "credit limit becomes 0. Reservations already confirmed on invoice stay invoiced.",
            button="Switch to card terms",
            danger=True,
        )

    @admin.action(
        description="Suspend (with a reason the customer sees)",
        permissions=["suspend_organization"],
    )
    def suspend(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        form = SuspendForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            self._each(
                request,
                queryset,
                lambda org: account_services.organization_suspend(
                    organization=org, actor=staff_actor(request), reason=reason
                ),
                "Suspended",
            )
            return None
        return self._confirm(
            request,
            queryset,
            form=form,
            title="Suspend organizations",
            intro="Members of these organizations will not be able to reserve, pay or use their "
            "API keys until they are reactivated. Running reservations are not stopped. "
            "The reason is shown to the members.",
            button="Suspend",
            danger=True,
        )

    @admin.action(description="Reactivate", permissions=["suspend_organization"])
    def reactivate(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(
            request,
            queryset,
            lambda org: account_services.organization_reactivate(
                organization=org, actor=staff_actor(request)
            ),
            "Reactivated",
        )

    @admin.action(description="Mark reviewed", permissions=["review_organization"])
    def mark_reviewed(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(
            request,
            queryset,
            lambda org: account_services.organization_review(
                organization=org, actor=staff_actor(request)
            ),
            "Marked reviewed:",
        )

    # Quotes
    def quote_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Make a quote for the organization: fill in, look at the price, then create."""
        if not staff_may(request.user, "capacity.create_quote"):
            raise PermissionDenied
        org = get_object_or_404(Organization, pk=object_id)
        form = QuoteForm(request.POST or None)
        preview = None
        status = 200
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                preview = quotes.quote_preview(
                    organization=org,
                    gpu_model=data["gpu_model"],
                    region=data["region"],
                    node_count=data["node_count"],
                    window=data["window"],
                    price_per_gpu_hour=data["price_per_gpu_hour"],
                    valid_for=data["valid_for"],
                )
            except ServiceError as exc:
                add_service_error(form, exc)
                status = 400
            else:
                confirmed = "create" in request.POST
                if confirmed and request.POST.get("previewed_total") != str(preview.price.total):
                    self.message_user(
                        request,
                        "The price changed since the preview; look at it again before creating.",
                        messages.WARNING,
                    )
                elif confirmed:
                    try:
                        reservation = quotes.quote_create(
                            organization=org,
                            actor=staff_actor(request),
                            gpu_model=data["gpu_model"],
                            region=data["region"],
                            node_count=data["node_count"],
                            window=data["window"],
                            price_per_gpu_hour=data["price_per_gpu_hour"],
                            valid_for=data["valid_for"],
                            note=data["note"],
                        )
                    except SoldOut as exc:
                        add_service_error(form, exc)
                        preview, status = None, 409
                    except ServiceError as exc:
                        add_service_error(form, exc)
                        preview, status = None, exc.status
                    else:
                        self.message_user(
                            request,
                            f"Quote {reservation.public_id} made for {org.name}: "
                            f"{format_money(reservation.total, reservation.currency)}, valid "
                            f"until {format_datetime(reservation.hold_expires_at)}. The "
                            "customer sees it on their reservations page.",
                            messages.SUCCESS,
                        )
                        return HttpResponseRedirect(
                            reverse("admin:capacity_reservation_change", args=[reservation.pk])
                        )
        elif request.method == "POST":
            status = 400
        context = {
            **self.admin_site.each_context(request),
            "title": f"Create a quote for {org.name}",
            "organization": org,
            "form": form,
            "preview": preview,
            "opts": self.model._meta,
            "original": org,
            "max_days": quotes.MAX_VALIDITY.days,
        }
        return TemplateResponse(request, "admin/sales/quote_form.html", context, status=status)


def _terms_summary(org: Organization, owed: Decimal) -> str:
    limit = (
        f", limit {format_money(org.credit_limit, org.currency)}" if org.on_invoice_terms else ""
    )
    return f"{org.get_payment_terms_display()}{limit}; owes {format_money(owed, org.currency)}"


def _balances(queryset: QuerySet) -> dict[int, Decimal]:
    rows = (
        LedgerEntry.objects.filter(organization__in=queryset.values("pk"))
        .order_by()
        .values("organization")
        .annotate(total=Sum("amount"))
    )
    return {row["organization"]: row["total"] for row in rows}


def related_links(request: HttpRequest, org: Organization) -> list[tuple[str, str]]:
    """Change lists filtered to this organization, for the models the user may see."""
    targets = [
        ("capacity", "reservation", "Reservations", f"organization__id__exact={org.pk}"),
        (
            "capacity",
            "reservation",
            "Quotes",
            f"organization__id__exact={org.pk}&quoted_by__isnull=False",
        ),
        ("capacity", "negotiatedrate", "Negotiated rates", f"organization__id__exact={org.pk}"),
        ("billing", "payment", "Payments", f"organization__id__exact={org.pk}"),
        ("billing", "invoice", "Invoices", f"organization__id__exact={org.pk}"),
        ("billing", "ledgerentry", "Ledger", f"organization__id__exact={org.pk}"),
        ("core", "auditevent", "Audit log", f"organization={org.pk}"),
    ]
    links = []
    for app_label, model, label, query in targets:
        if not staff_may(request.user, f"{app_label}.view_{model}"):
            continue
        try:
            url = reverse(f"admin:{app_label}_{model}_changelist")
        except NoReverseMatch:
            continue
        links.append((label, f"{url}?{query}"))
    return links


admin.site.register(Organization, OrganizationAdmin)
