"""Billing's stored money is never negative except in the ledger, whose entries are signed on
purpose (charges positive, what settles them negative). Model prices refuse negatives and
currencies without cents where finance sets them, and the database refuses both."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from backoffice.roles import FINANCE
from billing.models import Invoice, LedgerEntry, ModelPrice, SlaCredit, UsageHour
from billing.services.prices import model_price_save
from core.models import AuditEvent
from tests.backoffice.conftest import make_staff, verified_client
from tests.capacity.conftest import catalog, frozen_clock  # noqa: F401
from tests.capacity.test_reservations import reserve

pytestmark = pytest.mark.django_db
NOT_NEGATIVE = "Ensure this value is greater than or equal to 0."


@pytest.fixture
def price():
    return ModelPrice.objects.create(
        model="llama-70b", input_per_million=Decimal("0.5000"), output_per_million=Decimal("1.5")
    )


def _refused_by_the_database(model, pk, **values) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        model.objects.filter(pk=pk).update(**values)


@pytest.mark.parametrize(
    ("form", "errors"),
    [
        ({"input_per_million": "-0.0001"}, {"input_per_million": [NOT_NEGATIVE]}),
        ({"output_per_million": "-3"}, {"output_per_million": [NOT_NEGATIVE]}),
        (
            {"currency": "jpy"},
            {
                "currency": [
                    "JPY is counted in whole units, and prices here are kept to the cent: "
                    "choose a currency with cents, e.g. usd, eur or gbp."
                ]
            },
        ),
    ],
)
def test_finance_cannot_set_a_negative_model_price_or_one_in_yen(price, form, errors):
    admin = verified_client(make_staff(FINANCE))
    response = admin.post(
        reverse("admin:billing_modelprice_change", args=[price.pk]),
        {
            "model": "llama-70b",
            "input_per_million": "0.5000",
            "output_per_million": "1.5000",
            "currency": "usd",
            **form,
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == errors
    price.refresh_from_db()
    assert (price.input_per_million, price.output_per_million, price.currency) == (
        Decimal("0.5000"),
        Decimal("1.5000"),
        "usd",
    )
    assert not AuditEvent.objects.filter(action="model_price.changed").exists()


def test_the_price_service_refuses_a_negative_price(price):
    price.output_per_million = Decimal("-1")
    with pytest.raises(ValidationError) as refused:
        model_price_save(price=price, actor=make_staff(FINANCE))
    assert refused.value.message_dict == {"output_per_million": [NOT_NEGATIVE]}
    price.refresh_from_db()
    assert price.output_per_million == Decimal("1.5000")


@pytest.mark.parametrize(
    "values",
    [
        {"input_per_million": Decimal("-0.01")},
        {"output_per_million": Decimal("-0.01")},
        {"currency": "jpy"},
        {"currency": "krw"},
    ],
)
def test_the_database_refuses_a_negative_model_price_or_one_in_yen(price, values):
    _refused_by_the_database(ModelPrice, price.pk, **values)


def test_stored_amounts_are_never_negative_but_the_ledger_is_signed(catalog, organization, owner):
    reservation = reserve(organization, owner, catalog)
    invoice = Invoice.objects.create(
        organization=organization, reservation=reservation, amount=reservation.total, currency="usd"
    )
    _refused_by_the_database(Invoice, invoice.pk, amount=Decimal("-0.01"))
    hour = UsageHour.objects.create(
        organization=organization,
        model="llama-70b",
        hour=timezone.now().replace(minute=0) - timedelta(hours=1),
        cost=Decimal("1.00"),
    )
    _refused_by_the_database(UsageHour, hour.pk, cost=Decimal("-1.00"))
    credit = SlaCredit.objects.create(
        organization=organization,
        reservation=reservation,
        cause=SlaCredit.Cause.LATE_START,
        key="start",
        minutes=30,
        node_hours=Decimal("1.0000"),
        percent=Decimal("50.00"),
        computed=Decimal("8.00"),
        amount=Decimal("8.00"),
        currency="usd",
        method=SlaCredit.Method.REFUND,
    )
    _refused_by_the_database(SlaCredit, credit.pk, node_hours=Decimal("-1"))
    _refused_by_the_database(SlaCredit, credit.pk, percent=Decimal("-50"))
    # A credit is a negative entry, as it has always been.
    entry = LedgerEntry.objects.create(
        organization=organization,
        kind=LedgerEntry.Kind.CREDIT,
        amount=Decimal("-8.00"),
        currency="usd",
        description="SLA credit",
    )
    assert entry.amount == Decimal("-8.00")
