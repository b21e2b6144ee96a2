"""An organization's currency (its prices, credit limit and invoices) is one counted in cents:
a zero- or three-decimal currency is refused where it is set, by the model with a message and
by the database with a constraint, rather than by a payment that cannot go through."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import Organization


@pytest.mark.parametrize("currency", ["jpy", "krw", "kwd"])
def test_a_currency_without_cents_is_refused(organization, currency):
    organization.currency = currency
    with pytest.raises(ValidationError) as refused:
        organization.full_clean()
    [message] = refused.value.message_dict["currency"]
    assert message.startswith(f"{currency.upper()} is counted in ")
    assert message.endswith("choose a currency with cents, e.g. usd, eur or gbp.")
    with pytest.raises(IntegrityError), transaction.atomic():
        Organization.objects.filter(pk=organization.pk).update(currency=currency)
    organization.refresh_from_db()
    assert organization.currency == "usd"


def test_a_currency_with_cents_is_kept(organization):
    organization.currency = "eur"
    organization.full_clean()
    organization.save()
    organization.refresh_from_db()
    assert organization.currency == "eur"
