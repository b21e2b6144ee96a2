"""Capacity's stored money is never negative (the ledger alone carries a sign), and prices are
set only in currencies counted in cents: the model refuses it with a message, the database
with a constraint."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from capacity.models import Extension, ListPrice, Reservation
from core.money import validate_currency

from .conftest import NEXT_HOUR, hours
from .test_reservations import reserve


def _refused_by_the_database(model, pk, **values) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        model.objects.filter(pk=pk).update(**values)


@pytest.mark.parametrize(
    "field", ["price_per_gpu_hour", "subtotal", "discount", "total", "refund_due"]
)
def test_a_reservations_money_is_never_negative(catalog, organization, owner, field):
    reservation = reserve(organization, owner, catalog)
    setattr(reservation, field, Decimal("-0.01"))
    with pytest.raises(ValidationError) as refused:
        reservation.full_clean()
    assert refused.value.message_dict[field] == ["Ensure this value is greater than or equal to 0."]
    _refused_by_the_database(Reservation, reservation.pk, **{field: Decimal("-0.01")})
    reservation.refresh_from_db()
    assert reservation.total == Decimal("768.00")


@pytest.mark.parametrize("field", ["subtotal", "discount", "price"])
def test_an_extensions_money_is_never_negative(catalog, organization, owner, field):
    reservation = reserve(organization, owner, catalog)
    extension = Extension.objects.create(
        reservation=reservation,
        hours=1,
        starts_at=reservation.ends_at,
        ends_at=reservation.ends_at + hours(1),
        currency="usd",
        subtotal=Decimal("32.00"),
        discount=Decimal("0.00"),
        price=Decimal("32.00"),
    )
    _refused_by_the_database(Extension, extension.pk, **{field: Decimal("-1.00")})


@pytest.mark.parametrize(
    ("currency", "message"),
    [
        (
            "jpy",
            "JPY is counted in whole units, and prices here are kept to the cent: choose a "
            "currency with cents, e.g. usd, eur or gbp.",
        ),
        (
            "kwd",
            "KWD is counted in thousandths, and prices here are kept to the cent: choose a "
            "currency with cents, e.g. usd, eur or gbp.",
        ),
        ("USD", "Give the currency as its three-letter code in lowercase, e.g. usd."),
        ("us", "Give the currency as its three-letter code in lowercase, e.g. usd."),
    ],
)
def test_a_list_price_in_a_currency_without_cents_is_refused(catalog, currency, message):
    price = ListPrice.objects.get(gpu_model=catalog.h100, region=catalog.east)
    price.currency = currency
    with pytest.raises(ValidationError) as refused:
        price.full_clean()
    assert refused.value.message_dict["currency"] == [message]
    if currency.islower() and len(currency) == 3:
        _refused_by_the_database(ListPrice, price.pk, currency=currency)
    price.refresh_from_db()
    assert price.currency == "usd"


def test_currencies_with_cents_are_taken():
    for currency in ("usd", "eur", "gbp", "chf", "inr"):
        validate_currency(currency)


def test_a_block_cannot_be_priced_in_yen_so_no_payment_meets_one(catalog, organization, owner):
    """Before the check, a yen list price made a reservation of 1,234.56 JPY whose payment
    then failed converting to Stripe's whole yen."""
    with pytest.raises(IntegrityError), transaction.atomic():
        ListPrice.objects.filter(gpu_model=catalog.h100, region=catalog.west).update(
            currency="jpy", price_per_gpu_hour=Decimal("2.1234")
        )
    reservation = reserve(organization, owner, catalog, start=NEXT_HOUR, region=catalog.west)
    assert reservation.currency == "usd"
