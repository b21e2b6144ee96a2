"""Finance reads SLA credits in the back office: the list, one credit with the refunds that
paid it back, and each such refund naming its credit. Nobody else sees them; nobody edits."""

from datetime import timedelta
from decimal import Decimal

import pytest

from backoffice.roles import FINANCE, OPERATIONS, SALES
from billing.models import Refund, SlaCredit
from tests.billing.conftest import catalog, localstripe_url, stripe_api  # noqa: F401
from tests.billing.test_sla_credits import POLICY, paid, start

from .conftest import make_staff, verified_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def credit(
    catalog, organization, owner, stripe_api, settings, django_capture_on_commit_callbacks
) -> SlaCredit:
    """A block up 61 minutes late: $32.00 refunded to its card (test_sla_credits.py)."""
    settings.SLA_CREDIT_POLICY = POLICY
    reservation, _ = paid(organization, owner, catalog, stripe_api)
    start(reservation, django_capture_on_commit_callbacks, late=timedelta(minutes=61))
    made = SlaCredit.objects.select_related("reservation").get()
    assert (made.amount, made.status) == (Decimal("32.00"), "granted")
    return made


def test_finance_lists_finds_and_reads_a_credit(credit):
    client = verified_client(make_staff(FINANCE))
    listed = client.get("/admin/billing/slacredit/")
    assert listed.status_code == 200
    assert [c.pk for c in listed.context["cl"].result_list] == [credit.pk]
    html = listed.content.decode()
    assert [credit.public_id in html, "$32.00" in html, "Started late" in html] == [True] * 3
    for term in (credit.public_id, credit.reservation.public_id):
        found = client.get("/admin/billing/slacredit/", {"q": term})
        assert [c.pk for c in found.context["cl"].result_list] == [credit.pk], term
    assert (
        client.get("/admin/billing/slacredit/", {"q": "slc_nothere"})
        .context["cl"]
        .result_list.count()
        == 0
    )
    refund = Refund.objects.get()
    page = client.get(f"/admin/billing/slacredit/{credit.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'<a href="/admin/billing/refund/{refund.pk}/change/">{refund.public_id}</a>' in html
    assert "None (refunds book their own)." in html
    assert "$32.00" in html


def test_a_refund_for_a_credit_links_to_it(credit):
    client = verified_client(make_staff(FINANCE))
    link = f'<a href="/admin/billing/slacredit/{credit.pk}/change/">SLA credit #{credit.pk}</a>'
    refund = Refund.objects.get()
    assert refund.settles == f"sla:{credit.pk}"
    assert link in client.get("/admin/billing/refund/").content.decode()
    assert link in client.get(f"/admin/billing/refund/{refund.pk}/change/").content.decode()


@pytest.mark.parametrize("group", [SALES, OPERATIONS])
def test_only_finance_sees_credits(credit, group):
    client = verified_client(make_staff(group))
    assert client.get("/admin/billing/slacredit/").status_code == 403
    assert client.get(f"/admin/billing/slacredit/{credit.pk}/change/").status_code == 403


def test_nobody_edits_a_credit_superusers_included(credit):
    client = verified_client(make_staff(superuser=True))
    before = SlaCredit.objects.values().get()
    page = client.post(
        f"/admin/billing/slacredit/{credit.pk}/change/", {"amount": "999.00", "status": "failed"}
    )
    assert page.status_code == 403
    assert client.get("/admin/billing/slacredit/add/").status_code == 403
    assert client.post(f"/admin/billing/slacredit/{credit.pk}/delete/").status_code == 403
    assert SlaCredit.objects.values().get() == before
