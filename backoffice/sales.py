"""Sales: customers, their terms, negotiated rates and quotes.

Every change goes through a service (accounts.services, billing.services.terms, capacity.rates,
capacity.quotes) that checks the staff member's permission and records an audit event; the
admin only collects input. Actions that take something away (suspending, closing the credit
line, deleting rates) show a confirmation page first, and report each row that failed and why.
Change lists read one page of rows in a fixed number of queries: spend and member counts are
subqueries, related rows are joined.
"""

from collections.abc import Callable, Iterable
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django import forms
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
from django.forms.models import construct_instance
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django_countries import countries

from accounts.models import ApiKey, Membership, Organization
from accounts.services import organizations as account_services
from backoffice.actor import staff_actor
from billing import selectors as billing_selectors
from billing.models import LedgerEntry
from billing.services import terms
from capacity import quotes, rates
from capacity.models import GpuModel, NegotiatedRate, Region
from capacity.services import SoldOut
from capacity.windows import window_for
from core.errors import ServiceError
from core.forms import add_service_error
from core.money import format_money
from core.staff import ServiceErrorsAsMessages, StaffReasonForm, staff_may

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups

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


# --- Filters ------------------------------------------------------------------------------------
class SpendFilter(admin.SimpleListFilter):
    title = "spend"
    parameter_name = "spend"
    BANDS = {
        "none": ("No spend", None, Decimal("0.00")),
        "lt1k": ("Under 1,000", Decimal("0.00"), Decimal("1000")),
        "1k": ("1,000 – 10,000", Decimal("1000"), Decimal("10000")),
        "10k": ("10,000 – 100,000", Decimal("10000"), Decimal("100000")),
        "100k": ("100,000 and more", Decimal("100000"), None),
    }

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _, _) in self.BANDS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        band = self.BANDS.get(self.value() or "")
        if band is None:
            return queryset
        _, low, high = band
        if low is None:  # no spend: nothing billed, or fully credited
            return queryset.filter(spend__lte=high)
        queryset = queryset.filter(spend__gt=low) if low == 0 else queryset.filter(spend__gte=low)
        return queryset if high is None else queryset.filter(spend__lt=high)


class ReviewFilter(admin.SimpleListFilter):
    """Named like the lookup the dashboard links to (`?reviewed_at__isnull=True`)."""

    title = "review"
    parameter_name = "reviewed_at__isnull"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("True", "Waiting for review"), ("False", "Reviewed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("True", "False"):
            return queryset.filter(reviewed_at__isnull=self.value() == "True")
        return queryset


class CountryFilter(admin.SimpleListFilter):
    """Only the countries customers are in (the full list has 250)."""

    title = "country"
    parameter_name = "country"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        codes = Organization.objects.order_by().values_list("country", flat=True).distinct()
        return sorted(((code, countries.name(code) or code) for code in codes), key=lambda c: c[1])

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(country=self.value()) if self.value() else queryset


# --- Inlines ------------------------------------------------------------------------------------
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
            return f"Revoked {key.revoked_at:%Y-%m-%d}"
        if key.expires_at is not None and key.expires_at <= now:
            return f"Expired {key.expires_at:%Y-%m-%d}"
        if key.revoked_at is not None:
            return f"Rotated, works until {key.revoked_at:%Y-%m-%d %H:%M}"
        return "Active"


# --- Action forms ---------------------------------------------------------------------------------
class ReasonForm(StaffReasonForm):
    reason_required = False
    reason_help = "Kept in the audit log."


class SuspendForm(StaffReasonForm):
    reason_missing = "Give a reason: the customer sees it and the audit log keeps it."
    reason_help = "Shown to the organization's members on every page, and kept in the audit log."


class TermsForm(ReasonForm):
    credit_limit = forms.DecimalField(
        max_digits=14,
        decimal_places=2,
        min_value=Decimal("0.00"),
        help_text="The most the organization may owe. At least its current balance.",
    )
    payment_days = forms.IntegerField(
        min_value=account_services.PAYMENT_DAYS_RANGE[0],
        max_value=account_services.PAYMENT_DAYS_RANGE[1],
        initial=30,
        help_text="Days to pay each invoice (net days).",
    )
    field_order = ["credit_limit", "payment_days", "reason"]


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
    ]
    fieldsets = [
        (None, {"fields": ["name", "slug", "legal_name", "country", "billing_email", "tax_id"]}),
        ("Address", {"fields": ["address"], "classes": ["collapse"]}),
        ("Sales", {"fields": ["tier", "account_owner", "reviewed_at", "reviewed_by"]}),
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
        return f"{org.reviewed_at:%Y-%m-%d}" if org.reviewed_at else "Waiting"

    @admin.display(description="balance owed")
    def balance(self, org: Organization) -> str:
        return format_money(billing_selectors.balance_for_org(org), org.currency)

    # The change form: details, tier and account owner, through the service
    def save_model(
        self, request: HttpRequest, obj: Organization, form: forms.ModelForm, change: bool
    ) -> None:
        editable = account_services.STAFF_EDITABLE
        changes = {name: form.cleaned_data[name] for name in form.changed_data if name in editable}
        if changes:
            account_services.organization_staff_update(
                organization=obj, actor=staff_actor(request), changes=changes
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
                            f"until {reservation.hold_expires_at:%d %b %Y %H:%M} UTC. The "
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


class QuoteForm(forms.Form):
    gpu_model = forms.ModelChoiceField(
        queryset=GpuModel.objects.filter(is_active=True), empty_label=None, label="GPU model"
    )
    region = forms.ModelChoiceField(
        queryset=Region.objects.filter(is_active=True), empty_label=None
    )
    node_count = forms.IntegerField(label="Nodes", min_value=1, initial=1)
    starts_at = forms.DateTimeField(
        label="Start (UTC)",
        help_text="On the hour.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 3600}),
    )
    duration_hours = forms.IntegerField(label="Hours", min_value=1, initial=24)
    price_per_gpu_hour = forms.DecimalField(
        label="Price per GPU-hour",
        required=False,
        max_digits=10,
        decimal_places=4,
        min_value=Decimal("0.0001"),
        help_text="Leave empty for the customer's own price (negotiated rate or list price).",
    )
    valid_days = forms.IntegerField(
        label="Valid for (days)",
        min_value=1,
        max_value=quotes.MAX_VALIDITY.days,
        initial=7,
        help_text="The nodes stay held until then (at the latest until the start).",
    )
    note = forms.CharField(
        required=False,
        max_length=quotes.NOTE_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="The customer sees this with the quote.",
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if "valid_days" in data:
            data["valid_for"] = timedelta(days=data["valid_days"])
        if "duration_hours" in data and "starts_at" in data:
            try:
                data["window"] = window_for(
                    starts_at=data["starts_at"], duration_hours=data["duration_hours"]
                )
            except ServiceError as exc:
                add_service_error(self, exc)
        return data


# --- Negotiated rates ---------------------------------------------------------------------------
class NegotiatedRateForm(StaffReasonForm, forms.ModelForm):
    reason_required = False
    reason_help = "Why this rate (kept in the audit log)."

    class Meta:
        model = NegotiatedRate
        labels = {"price_per_gpu_hour": "Price per GPU-hour", "gpu_model": "GPU model"}
        help_texts = {
            "valid_from": "UTC. Reservations starting from then get this price.",
            "valid_until": "UTC, exclusive.",
            "region": "Empty means every region; a region's own rate beats an every-region one.",
        }
        fields = [
            "organization",
            "gpu_model",
            "region",
            "price_per_gpu_hour",
            "valid_from",
            "valid_until",
        ]

    def clean(self) -> dict[str, Any]:
        """Check the rate the way the service will, with the organization's row locked: the
        admin validates and saves in one transaction, so the check still holds at the save."""
        super().clean()
        data = self.cleaned_data
        organization = data.get("organization") or (
            self.instance.organization if self.instance.pk else None
        )
        if self.errors or organization is None:
            return data
        try:
            rates.validate_rate(
                organization=organization,
                gpu_model=data["gpu_model"],
                region=data.get("region"),
                price_per_gpu_hour=data["price_per_gpu_hour"],
                valid_from=data["valid_from"],
                valid_until=data["valid_until"],
                exclude_pk=self.instance.pk,
            )
        except ServiceError as exc:
            add_service_error(self, exc)
        return data

    def _post_clean(self) -> None:
        # Fill the instance (the admin logs and redirects with it) without the model's own
        # checks, which would repeat ours in worse words; the service validates and saves.
        self.instance = construct_instance(self, self.instance, self._meta.fields)


class ValidityFilter(admin.SimpleListFilter):
    title = "validity"
    parameter_name = "validity"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("current", "In force now"), ("upcoming", "Upcoming"), ("ended", "Ended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        if self.value() == "current":
            return queryset.filter(valid_from__lte=now, valid_until__gt=now)
        if self.value() == "upcoming":
            return queryset.filter(valid_from__gt=now)
        if self.value() == "ended":
            return queryset.filter(valid_until__lte=now)
        return queryset


class NegotiatedRateAdmin(ServiceErrorsAsMessages):
    form = NegotiatedRateForm
    list_display = [
        "organization",
        "gpu_model",
        "region_label",
        "price_label",
        "valid_from",
        "valid_until",
        "validity",
        "created_by",
    ]
    list_filter = [ValidityFilter, "gpu_model", "region"]
    search_fields = ["^organization__name", "=organization__slug"]
    search_help_text = "Organization name (from the start) or exact slug."
    list_select_related = ["organization", "gpu_model", "region", "created_by"]
    autocomplete_fields = ["organization"]
    readonly_fields = ["created_by", "created_at"]
    fields = [
        "organization",
        "gpu_model",
        "region",
        "price_per_gpu_hour",
        "valid_from",
        "valid_until",
        "reason",
        "created_by",
        "created_at",
    ]
    actions = ["delete_rates"]
    show_full_result_count = False

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # ours goes through the service, row by row
        return actions

    @admin.display(description="region", ordering="region__code")
    def region_label(self, rate: NegotiatedRate) -> str:
        return rate.region.code if rate.region else "Every region"

    @admin.display(description="price / GPU-h", ordering="price_per_gpu_hour")
    def price_label(self, rate: NegotiatedRate) -> str:
        return f"{rate.price_per_gpu_hour.normalize():f}"

    @admin.display(description="in force")
    def validity(self, rate: NegotiatedRate) -> str:
        now = timezone.now()
        if rate.valid_until <= now:
            return "Ended"
        return "Now" if rate.valid_from <= now else "Upcoming"

    def save_model(
        self, request: HttpRequest, obj: NegotiatedRate, form: forms.ModelForm, change: bool
    ) -> None:
        data = form.cleaned_data
        fields = {
            "gpu_model": data["gpu_model"],
            "region": data.get("region"),
            "price_per_gpu_hour": data["price_per_gpu_hour"],
            "valid_from": data["valid_from"],
            "valid_until": data["valid_until"],
            "reason": data.get("reason", ""),
        }
        if change:
            saved = rates.negotiated_rate_update(rate=obj, actor=staff_actor(request), **fields)
        else:
            saved = rates.negotiated_rate_create(
                organization=data["organization"], actor=staff_actor(request), **fields
            )
        obj.pk, obj.created_by, obj.created_at = saved.pk, saved.created_by, saved.created_at
        obj._state.adding = False

    def get_fields(self, request: HttpRequest, obj: object = None) -> "_FieldGroups":
        fields = self.fields or []
        if obj is None:  # who made it and when are filled in by the service
            return [f for f in fields if f not in ("created_by", "created_at")]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        # A rate stays with its organization; a rate for another one is a new rate.
        return [*self.readonly_fields, "organization"] if obj is not None else self.readonly_fields

    def delete_model(self, request: HttpRequest, obj: NegotiatedRate) -> None:
        rates.negotiated_rate_delete(rate=obj, actor=staff_actor(request))

    @admin.action(description="Delete selected rates", permissions=["delete"])
    def delete_rates(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            deleted = 0
            for rate in queryset:
                try:
                    rates.negotiated_rate_delete(
                        rate=rate, actor=staff_actor(request), reason=form.cleaned_data["reason"]
                    )
                except ServiceError as exc:
                    self.message_user(request, f"{rate}: {exc.message}", messages.ERROR)
                else:
                    deleted += 1
            if deleted:
                self.message_user(
                    request,
                    f"Deleted {deleted} rate{'s' if deleted != 1 else ''}. Reservations already "
                    "made keep their prices.",
                    messages.SUCCESS,
                )
            return None
        return TemplateResponse(
            request,
            "admin/sales/action_confirm.html",
            {
                **self.admin_site.each_context(request),
                "title": "Delete negotiated rates",
                "intro": "New reservations of these organizations will be priced without these "
                "rates. Reservations already made keep their prices.",
                "button": "Delete rates",
                "danger": True,
                "form": form,
                "rows": [
                    (rate, f"{rate.valid_from:%Y-%m-%d} → {rate.valid_until:%Y-%m-%d}")
                    for rate in queryset
                ],
                "action": request.POST.get("action", ""),
                "select_across": request.POST.get("select_across", "0"),
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
                "opts": self.model._meta,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )


admin.site.register(Organization, OrganizationAdmin)
admin.site.register(NegotiatedRate, NegotiatedRateAdmin)
