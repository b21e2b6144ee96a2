"""The sales back office: organizations (filters, terms, suspension, review), negotiated rates
and quotes, each change through its service and audited."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import api_keys
from accounts.models import Organization
from accounts.permissions import Role
from backoffice.roles import FINANCE, OPERATIONS, SALES
from billing.models import LedgerEntry
from capacity import rates
from capacity.models import NegotiatedRate, Reservation
from core.errors import ServiceError
from core.models import AuditEvent
from tests.capacity.conftest import NOW, Catalog, catalog, frozen_clock  # noqa: F401
from tests.conftest import member_of
from tests.factories import OrganizationFactory

from .conftest import GROUPS, make_staff, verified_client

pytestmark = pytest.mark.django_db

ORGS = "/admin/accounts/organization/"
RATES = "/admin/capacity/negotiatedrate/"


def charge(org: Organization, amount: str, kind: str = "charge") -> None:
    LedgerEntry.objects.create(
        organization=org, kind=kind, amount=Decimal(amount), currency="usd", description=kind
    )


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def terms_of(*orgs: Organization) -> list[tuple]:
    return list(
        Organization.objects.filter(pk__in=[o.pk for o in orgs])
        .order_by("pk")
        .values_list("status", "payment_terms", "payment_days", "credit_limit", "reviewed_at")
    )


def action(client, name: str, orgs, **data):
    return client.post(
        ORGS, {"action": name, "_selected_action": [o.pk for o in orgs], **data}, follow=True
    )


# --- The organization list --------------------------------------------------------------------
def test_the_list_shows_spend_members_and_review(db):
    owner = make_staff(SALES, email="dana@hyperblock.test")
    owner.full_name = "Dana Reyes"
    owner.save()
    acme = OrganizationFactory(name="Acme", account_owner=owner)
    member_of(acme, Role.OWNER)
    member_of(acme, Role.MEMBER)
    charge(acme, "1500.00")
    charge(acme, "250.50", "usage")
    charge(acme, "-100.00", "credit")
    charge(acme, "-1650.50", "payment")  # paid: not spend
    client = verified_client(make_staff(SALES))
    page = client.get(ORGS).content.decode()
    assert '<td class="field-spend_label">$1,650.50</td>' in page
    assert '<td class="field-member_count">2</td>' in page
    assert '<td class="field-review_label">Waiting</td>' in page
    assert '<td class="field-owner_label">Dana</td>' in page
    assert '<td class="field-terms_label">Card</td>' in page


@pytest.mark.parametrize("group", GROUPS)
def test_every_staff_group_may_look_but_only_sales_gets_the_actions(db, group):
    OrganizationFactory()
    page = verified_client(make_staff(group)).get(ORGS).content.decode()
    sales_actions = ["approve_invoice_terms", "switch_to_card_terms", "suspend", "reactivate",
                     "mark_reviewed"]  # fmt: skip
    shown = [name for name in sales_actions if f'value="{name}"' in page]
    assert shown == (sales_actions if group == SALES else [])


def rows_for(client, query: str) -> list[str]:
    response = client.get(f"{ORGS}?{query}")
    assert response.status_code == 200
    return [o.name for o in response.context["cl"].result_list]


def test_filters_and_prefix_search(db):
    dana = make_staff(SALES)
    big = OrganizationFactory(name="Big Corp", country="US", account_owner=dana,
                              payment_terms="invoice")  # fmt: skip
    charge(big, "150000")
    mid = OrganizationFactory(name="Mid GmbH", country="DE", legal_name="Mittel GmbH")
    charge(mid, "2500")
    OrganizationFactory(name="New Ltd", country="GB", billing_email="ap@newltd.example")
    Organization.objects.filter(pk=mid.pk).update(reviewed_at=NOW)
    client = verified_client(make_staff(SALES))
    assert rows_for(client, "spend=100k") == ["Big Corp"]
    assert rows_for(client, "spend=1k") == ["Mid GmbH"]
    assert rows_for(client, "spend=none") == ["New Ltd"]
    assert rows_for(client, "reviewed_at__isnull=True") == ["Big Corp", "New Ltd"]
    assert rows_for(client, "reviewed_at__isnull=False") == ["Mid GmbH"]
    assert rows_for(client, "payment_terms__exact=invoice") == ["Big Corp"]
    assert rows_for(client, "country=DE") == ["Mid GmbH"]
    assert rows_for(client, f"account_owner__id__exact={dana.pk}") == ["Big Corp"]
    assert rows_for(client, "q=mit") == ["Mid GmbH"]  # legal name, from the start
    assert rows_for(client, "q=ap%40newltd") == ["New Ltd"]
    assert rows_for(client, "q=corp") == []  # not from the start of a field
    assert rows_for(client, "q=big+corp") == ["Big Corp"]  # the whole name, spaces and all
    assert rows_for(client, "q=mittel+gm") == ["Mid GmbH"]
    assert rows_for(client, "q=big+ltd") == []
    assert rows_for(client, "o=-5") == ["Big Corp", "Mid GmbH", "New Ltd"]  # by spend


def _count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_organization_list_costs_the_same_queries_for_500_rows(catalog, monkeypatch):
    from backoffice.sales.organizations import OrganizationAdmin
    from backoffice.sales.rates import NegotiatedRateAdmin

    for admin_class in (OrganizationAdmin, NegotiatedRateAdmin):  # every row on one page
        monkeypatch.setattr(admin_class, "list_per_page", 1000)
    client = verified_client(make_staff(SALES))
    owners = [make_staff(SALES) for _ in range(3)]

    def grow(n: int) -> None:
        orgs = Organization.objects.bulk_create(
            Organization(name=f"Org {i:04d}", slug=f"bulk-{i}", country="DE",
                         billing_email=f"b{i}@example.com", account_owner=owners[i % 3])
            for i in range(Organization.objects.count(), n)
        )  # fmt: skip
        LedgerEntry.objects.bulk_create(
            LedgerEntry(organization=o, kind="charge", amount=Decimal("10"), currency="usd",
                        description="x")
            for o in orgs
        )  # fmt: skip

    grow(5)
    few = _count_queries(client, f"{ORGS}?spend=lt1k")
    grow(500)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"{ORGS}?spend=lt1k")
    assert len(response.context["cl"].result_list) == 500
    assert len(queries) == few
    rates_few = _count_queries(client, RATES)
    for org in Organization.objects.all()[:500]:
        NegotiatedRate.objects.create(
            organization=org, gpu_model=catalog.h100, region=catalog.east,
            price_per_gpu_hour=Decimal("1.5"), valid_from=NOW, valid_until=NOW + timedelta(days=9),
        )  # fmt: skip
    assert _count_queries(client, RATES) == rates_few


# --- The organization page --------------------------------------------------------------------
def test_the_page_lists_members_keys_and_links_without_secrets(db):
    acme = OrganizationFactory(name="Acme")
    owner = member_of(acme, Role.OWNER)
    key, raw = api_keys.api_key_create(
        organization=acme, actor=owner, name="ci", scopes=["reservations:read"]
    )
    client = verified_client(make_staff(SALES))
    page = client.get(f"{ORGS}{acme.pk}/change/").content.decode()
    assert owner.email in page
    assert f"hbk_{key.public_id}_…" in page
    assert raw not in page
    assert key.digest not in page
    assert f'href="/admin/capacity/reservation/?organization__id__exact={acme.pk}"' in page
    assert f'href="/admin/billing/payment/?organization__id__exact={acme.pk}"' in page
    assert f'href="/admin/accounts/organization/{acme.pk}/quote/"' in page
    # Terms and status are read-only here: no inputs for them.
    for field in ("status", "payment_terms", "payment_days", "credit_limit", "suspended_reason"):
        assert f'name="{field}"' not in page


def test_the_linked_lists_are_filtered_to_the_organization(catalog):
    acme, other = OrganizationFactory(), OrganizationFactory()
    for org in (acme, other):
        NegotiatedRate.objects.create(
            organization=org, gpu_model=catalog.h100, region=None,
            price_per_gpu_hour=Decimal("1.5"), valid_from=NOW, valid_until=NOW + timedelta(days=9),
        )  # fmt: skip
    client = verified_client(make_staff(SALES))
    response = client.get(f"{RATES}?organization__id__exact={acme.pk}")
    assert [r.organization for r in response.context["cl"].result_list] == [acme]
    response = client.get(f"/admin/capacity/reservation/?organization__id__exact={acme.pk}")
    assert response.status_code == 200


def test_editing_details_goes_through_the_service_and_is_audited(db):
    acme = OrganizationFactory(name="Acme", tier="self_serve")
    dana = make_staff(SALES, email="dana@hyperblock.test")
    client = verified_client(make_staff(SALES))
    page = client.get(f"{ORGS}{acme.pk}/change/")
    form = page.context["adminform"].form
    data = {name: form.initial.get(name) or "" for name in form.fields}
    data.update(
        tier="enterprise",
        account_owner=dana.pk,
        **{f"{p}-{k}": v for p in ("memberships", "api_keys")
           for k, v in {"TOTAL_FORMS": 0, "INITIAL_FORMS": 0}.items()},
    )  # fmt: skip
    response = client.post(f"{ORGS}{acme.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    acme.refresh_from_db()
    assert (acme.tier, acme.account_owner) == ("enterprise", dana)
    event = AuditEvent.objects.get(action="organization.updated")
    assert event.data == {
        "changes": {"tier": ["self_serve", "enterprise"], "account_owner": ["", str(dana)]}
    }


# --- Actions ----------------------------------------------------------------------------------
def test_approving_terms_asks_for_the_limit_first_then_reports_each_failure(db):
    good = OrganizationFactory(name="Good Co")
    owing = OrganizationFactory(name="Owing Co")
    charge(owing, "9000.00")
    client = verified_client(make_staff(SALES))
    page = action(client, "approve_invoice_terms", [good, owing])
    html = page.content.decode()
    assert "Approve invoice terms" in html
    assert 'Owing Co</strong> <span class="quiet">— Card, paid upfront; owes $9,000.00' in html
    assert terms_of(good, owing) == [
        ("active", "card", 30, Decimal("0.00"), None),
        ("active", "card", 30, Decimal("0.00"), None),
    ]
    done = action(
        client, "approve_invoice_terms", [good, owing],
        apply="yes", credit_limit="5000", payment_days="60", reason="MSA signed",
    )  # fmt: skip
    assert texts(done) == [
        "Owing Co: The credit limit ($5,000.00) is below what Owing Co owes now ($9,000.00). "
        "Give a limit of at least the balance.",
        "Invoice terms approved for 1 organization.",
    ]
    assert terms_of(good, owing) == [
        ("active", "invoice", 60, Decimal("5000.00"), None),
        ("active", "card", 30, Decimal("0.00"), None),
    ]
    assert AuditEvent.objects.get(action="organization.terms_changed").reason == "MSA signed"


def test_bad_terms_input_shows_the_form_again_and_changes_nothing(db):
    org = OrganizationFactory()
    client = verified_client(make_staff(SALES))
    page = action(client, "approve_invoice_terms", [org], apply="yes", credit_limit="-5",
                  payment_days="200")  # fmt: skip
    html = page.content.decode()
    assert "Ensure this value is greater than or equal to 0.00." in html
    assert "Ensure this value is less than or equal to 120." in html
    assert terms_of(org) == [("active", "card", 30, Decimal("0.00"), None)]


def test_suspending_needs_confirmation_and_a_reason(db):
    org, already = OrganizationFactory(name="Fresh"), OrganizationFactory(name="Already")
    Organization.objects.filter(pk=already.pk).update(status="suspended", suspended_reason="x")
    client = verified_client(make_staff(SALES))
    confirm = action(client, "suspend", [org, already])
    assert "Members of these organizations will not be able to reserve" in confirm.content.decode()
    assert terms_of(org)[0][0] == "active"
    missing = action(client, "suspend", [org], apply="yes", reason=" ")
    assert "Give a reason: the customer sees it and the audit log keeps it." in (
        missing.content.decode()
    )
    assert terms_of(org)[0][0] == "active"
    done = action(client, "suspend", [org, already], apply="yes", reason="Chargebacks")
    assert texts(done) == ["Already: Already is already suspended.", "Suspended 1 organization."]
    org.refresh_from_db()
    assert (org.status, org.suspended_reason) == ("suspended", "Chargebacks")


def test_reactivating_and_reviewing_apply_at_once(db):
    suspended = OrganizationFactory(name="Paused", status="suspended", suspended_reason="x")
    active = OrganizationFactory(name="Running")
    client = verified_client(make_staff(SALES))
    assert texts(action(client, "reactivate", [suspended, active])) == [
        "Running: Running is not suspended.",
        "Reactivated 1 organization.",
    ]
    assert texts(action(client, "mark_reviewed", [suspended, active])) == [
        "Marked reviewed: 2 organizations."
    ]
    assert terms_of(suspended, active)[0][0] == "active"
    assert Organization.objects.filter(reviewed_at__isnull=True).count() == 0
    assert AuditEvent.objects.filter(action="organization.reviewed").count() == 2


def test_switching_to_card_terms_asks_first(db):
    org = OrganizationFactory(payment_terms="invoice", credit_limit=Decimal("5000"))
    client = verified_client(make_staff(SALES))
    assert (
        "credit limit becomes 0" in action(client, "switch_to_card_terms", [org]).content.decode()
    )
    assert terms_of(org)[0][1] == "invoice"
    done = action(client, "switch_to_card_terms", [org], apply="yes", reason="Late payer")
    assert texts(done) == ["Switched to card terms: 1 organization."]
    assert terms_of(org) == [("active", "card", 30, Decimal("0.00"), None)]


@pytest.mark.parametrize("group", [OPERATIONS, FINANCE])
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("approve_invoice_terms", {"credit_limit": "100", "payment_days": "30"}),
        ("switch_to_card_terms", {}),
        ("suspend", {"reason": "Fraud"}),
        ("reactivate", {}),
        ("mark_reviewed", {}),
    ],
)
def test_other_groups_cannot_run_sales_actions(db, group, name, extra):
    org = OrganizationFactory(status="suspended" if name == "reactivate" else "active")
    before = terms_of(org)
    client = verified_client(make_staff(group))
    response = action(client, name, [org], apply="yes", **extra)
    assert response.status_code == 200
    assert terms_of(org) == before
    assert AuditEvent.objects.filter(organization=org).count() == 0


# --- Quotes -----------------------------------------------------------------------------------
QUOTE = {
    "node_count": "2",
    "starts_at": "2026-12-10T00:00",
    "duration_hours": "24",
    "price_per_gpu_hour": "1.85",
    "valid_days": "7",
    "note": "Launch pricing",
}


def quote_data(catalog: Catalog, **extra: str) -> dict:
    return {"gpu_model": catalog.h100.pk, "region": catalog.east.pk, **QUOTE, **extra}


@pytest.mark.parametrize("group", GROUPS)
def test_only_sales_opens_the_quote_page(catalog, group):
    org = OrganizationFactory()
    response = verified_client(make_staff(group)).get(f"{ORGS}{org.pk}/quote/")
    assert response.status_code == (200 if group == SALES else 403)


def test_a_quote_shows_its_price_before_it_is_made(catalog):
    org = OrganizationFactory(name="Acme")
    client = verified_client(make_staff(SALES))
    url = f"{ORGS}{org.pk}/quote/"
    preview = client.post(url, quote_data(catalog, preview="1"))
    html = preview.content.decode()
    assert '<td class="num" data-testid="quote-total">$710.40</td>' in html
    assert "2 × 8 H100 × 24 h at the quoted $1.85/GPU-h" in html
    assert "Their own price (list) would be" in html
    assert "Valid until <strong>Tue 8 Dec 2026, 09:30 UTC</strong>" in html
    assert Reservation.objects.count() == 0
    stale = client.post(url, quote_data(catalog, create="1", previewed_total="700.00"))
    assert "The price changed since the preview" in " ".join(texts(stale))
    assert Reservation.objects.count() == 0
    made = client.post(url, quote_data(catalog, create="1", previewed_total="710.40"))
    reservation = Reservation.objects.get()
    assert made.status_code == 302
    assert made["Location"] == f"/admin/capacity/reservation/{reservation.pk}/change/"
    assert (reservation.state, reservation.total, reservation.quote_note) == (
        "held",
        Decimal("710.40"),
        "Launch pricing",
    )
    assert texts(made) == [
        f"Quote {reservation.public_id} made for Acme: $710.40, valid until Tue 8 Dec 2026, 09:30 "
        "UTC. The customer sees it on their reservations page."
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"starts_at": "2026-12-10T00:30"}, "Blocks start on the hour (for example 09:00, not"),
        ({"valid_days": "15"}, "Ensure this value is less than or equal to 14."),
        ({"node_count": "9"}, "9 × H100 in US East is no longer available for that window."),
    ],
)  # fmt: skip
def test_a_bad_quote_is_shown_with_its_error_and_nothing_held(catalog, extra, message):
    org = OrganizationFactory()
    client = verified_client(make_staff(SALES))
    data = quote_data(catalog, create="1", previewed_total="710.40", **extra)
    if "node_count" in extra:
        data["previewed_total"] = "3196.80"
    response = client.post(f"{ORGS}{org.pk}/quote/", data)
    assert response.status_code in (400, 409)
    assert message in response.content.decode()
    assert Reservation.objects.count() == 0


# --- Negotiated rates -------------------------------------------------------------------------
def rate_form(catalog: Catalog, org: Organization, **extra: str) -> dict:
    return {
        "organization": org.pk,
        "gpu_model": catalog.h100.pk,
        "region": "",
        "price_per_gpu_hour": "1.70",
        "valid_from_0": "2027-01-01",
        "valid_from_1": "00:00:00",
        "valid_until_0": "2027-02-01",
        "valid_until_1": "00:00:00",
        "reason": "Annual contract",
        **extra,
    }


def test_adding_a_rate_in_the_admin_goes_through_the_service(catalog):
    org = OrganizationFactory()
    sales = make_staff(SALES)
    client = verified_client(sales)
    response = client.post(f"{RATES}add/", rate_form(catalog, org))
    assert response.status_code == 302
    rate = NegotiatedRate.objects.get()
    assert (rate.created_by, rate.price_per_gpu_hour, rate.valid_from) == (
        sales,
        Decimal("1.7000"),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    event = AuditEvent.objects.get(action="negotiated_rate.created")
    assert (event.actor, event.reason) == (sales, "Annual contract")


def test_an_overlapping_rate_is_a_form_error_and_nothing_is_saved(catalog):
    org = OrganizationFactory(name="Acme")
    client = verified_client(make_staff(SALES))
    client.post(f"{RATES}add/", rate_form(catalog, org))
    response = client.post(
        f"{RATES}add/",
        rate_form(catalog, org, valid_from_0="2027-01-15", valid_until_0="2027-03-01"),
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "valid_from": [
            "Acme already has a H100 rate in every region from Fri 1 Jan 2027, 00:00 UTC to "
            "Mon 1 Feb 2027, 00:00 UTC (1.7/GPU-h) that overlaps this window. End that rate "
            "first, or choose a window that starts when it ends."
        ]
    }
    assert NegotiatedRate.objects.count() == 1
    assert AuditEvent.objects.filter(action="negotiated_rate.created").count() == 1


def test_changing_and_deleting_rates_in_the_admin(catalog):
    org = OrganizationFactory()
    client = verified_client(make_staff(SALES))
    client.post(f"{RATES}add/", rate_form(catalog, org))
    rate = NegotiatedRate.objects.get()
    data = rate_form(catalog, org, price_per_gpu_hour="1.65")
    del data["organization"]  # read-only once made
    assert client.post(f"{RATES}{rate.pk}/change/", data).status_code == 302
    rate.refresh_from_db()
    assert rate.price_per_gpu_hour == Decimal("1.6500")
    confirm = client.post(RATES, {"action": "delete_rates", "_selected_action": [rate.pk]})
    assert "Delete negotiated rates" in confirm.content.decode()
    assert NegotiatedRate.objects.count() == 1
    done = client.post(
        RATES,
        {"action": "delete_rates", "_selected_action": [rate.pk], "apply": "yes", "reason": "End"},
        follow=True,
    )
    assert texts(done) == ["Deleted 1 rate. Reservations already made keep their prices."]
    assert NegotiatedRate.objects.count() == 0
    assert [e.action for e in AuditEvent.objects.order_by("pk")] == [
        "negotiated_rate.created",
        "negotiated_rate.changed",
        "negotiated_rate.deleted",
    ]


@pytest.mark.parametrize("group", [OPERATIONS, FINANCE])
def test_other_groups_cannot_touch_rates(catalog, group):
    org = OrganizationFactory()
    client = verified_client(make_staff(group))
    assert client.post(f"{RATES}add/", rate_form(catalog, org)).status_code == 403
    assert NegotiatedRate.objects.count() == 0


def test_a_rate_refused_between_the_check_and_the_save_is_a_message(catalog, monkeypatch):
    """Another rate saved between the form's check and the save: the service refuses, the save
    is rolled back and shown as a message, not an error page."""
    org = OrganizationFactory(name="Acme")
    client = verified_client(make_staff(SALES))

    def refused(**kwargs):
        raise ServiceError("Acme got an overlapping rate a moment ago.", param="valid_from")

    monkeypatch.setattr(rates, "negotiated_rate_create", refused)
    response = client.post(f"{RATES}add/", rate_form(catalog, org), follow=True)
    assert response.status_code == 200
    assert [str(m) for m in response.context["messages"]] == [
        "Acme got an overlapping rate a moment ago."
    ]
    assert NegotiatedRate.objects.count() == 0
