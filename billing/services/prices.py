"""Prices of hosted models, set by finance staff; new usage hours are priced with them."""

from typing import Any

from django.db import transaction

from accounts.models import User
from core import audit

from ..models import ModelPrice
from .accounts import require_finance_staff

PRICE_FIELDS = ("model", "input_per_million", "output_per_million", "currency")


@transaction.atomic
def model_price_save(*, price: ModelPrice, actor: User) -> ModelPrice:
    """Create or change the price of a hosted model; new usage hours are priced with it."""
    creating = price.pk is None
    require_finance_staff(
        actor,
        "billing.add_modelprice" if creating else "billing.change_modelprice",
        "Only finance staff can set model prices.",
    )
    before: dict[str, Any] = {}
    if not creating:
        old = ModelPrice.objects.select_for_update().get(pk=price.pk)
        before = {f: str(getattr(old, f)) for f in PRICE_FIELDS}
    price.full_clean()
    price.save()
    after = {f: str(getattr(price, f)) for f in PRICE_FIELDS}
    changes = {f: [before.get(f), after[f]] for f in PRICE_FIELDS if before.get(f) != after[f]}
    audit.record(
        action="model_price.created" if creating else "model_price.changed",
        actor=actor,
        target=price,
        data={"changes": changes},
    )
    return price
