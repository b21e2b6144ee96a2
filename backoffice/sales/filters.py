"""Filters of the organization list: spend band, review, country."""

from decimal import Decimal

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django_countries import countries

from accounts.models import Organization


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
