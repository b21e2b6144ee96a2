"""Finance admin for token usage: model prices and usage hours."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from backoffice.actor import staff_actor
from billing.models import ModelPrice, UsageHour
from billing.services import prices

from .common import FinanceAdmin, money, org_filter_link


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Finance sets the price of each hosted model; changes are audited."""

    show_facets = admin.ShowFacets.NEVER
    list_display = ["model", "input_per_million", "output_per_million", "currency"]
    search_fields = ["^model"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # usage already priced with it stays explainable; change it instead

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        prices.model_price_save(price=obj, actor=staff_actor(request))


@admin.register(UsageHour)
class UsageHourAdmin(FinanceAdmin):
    list_display = [
        "hour",
        "organization_link",
        "model",
        "input_tokens",
        "output_tokens",
        "priced",
        "pushed_at",
    ]
    list_filter = [("hour", admin.DateFieldListFilter)]
    list_select_related = ["organization"]
    search_fields = ["^organization__name", "=model"]
    search_help_text = "A model's name, or the start of an organization's name."

    @admin.display(description="organization", ordering="organization__name")
    def organization_link(self, obj: UsageHour) -> str:
        return org_filter_link(self, obj)

    @admin.display(description="cost", ordering="cost")
    def priced(self, obj: UsageHour) -> str:
        return money(obj.cost, obj.currency)
