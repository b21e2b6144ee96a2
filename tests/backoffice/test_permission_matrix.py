"""Each staff group sees and does exactly what it should in the back office, and no more.

The expected matrix is written out here by hand, apart from the groups table it checks, so a
permission granted by mistake (in the table or by an admin class) fails this test.
"""

import pytest
from django.contrib import admin
from django.test import RequestFactory

from accounts.models import User

from .conftest import make_staff, verified_client

pytestmark = pytest.mark.django_db

V, A, C, D = "view", "add", "change", "delete"
# model -> what the group may do with it in the admin; a model not listed is invisible.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "Sales": {
        "accounts.user": {V},
        "accounts.organization": {V, C},
        "accounts.invitation": {V},
        "accounts.membership": {V},
        "accounts.apikey": {V},
        "capacity.gpumodel": {V},
        "capacity.region": {V},
        "capacity.listprice": {V},
        "capacity.durationdiscount": {V},
        "capacity.negotiatedrate": {V, A, C, D},
        "capacity.reservation": {V},
        "billing.billingaccount": {V},
        "billing.payment": {V},
        "billing.invoice": {V},
        "billing.ledgerentry": {V},
        "core.auditevent": {V},
    },
    "Operations": {
        "accounts.organization": {V},
        "capacity.gpumodel": {V},
        "capacity.region": {V, A, C},
        "capacity.cluster": {V, A, C},
        "capacity.node": {V, A, C},
        "capacity.reservation": {V},
        "capacity.allocation": {V},
        "capacity.incident": {V, C},
        "core.auditevent": {V},
    },
    "Finance": {
        "accounts.organization": {V},
        "capacity.reservation": {V},
        "capacity.listprice": {V},
        "billing.billingaccount": {V},
        "billing.payment": {V},
        "billing.refund": {V},
        "billing.invoice": {V},
        "billing.ledgerentry": {V},
        "billing.webhookevent": {V},
        "billing.webhookprocessing": {V},
        "billing.financeflag": {V},
        "billing.modelprice": {V, A, C},
        "billing.usagehour": {V},
        "billing.slacredit": {V},
        "core.auditevent": {V},
    },
}
# model -> the admin actions the group is offered (on the models it can see).
ACTIONS: dict[str, dict[str, set[str]]] = {
    "Sales": {
        "accounts.organization": {
            "approve_invoice_terms",
            "switch_to_card_terms",
            "suspend",
            "reactivate",
            "mark_reviewed",
        },
        "capacity.negotiatedrate": {"delete_rates"},
    },
    "Operations": {
        "capacity.node": {"drain", "restore"},
        "capacity.reservation": {"cancel_with_refund", "extend", "retry", "force_release"},
        "capacity.incident": {"resolve"},
    },
    "Finance": {
        "billing.payment": {"refund_in_full"},
        "billing.invoice": {"send_again"},
        "billing.webhookevent": {"replay"},
        "billing.financeflag": {"resolve"},
    },
}
# Records nobody changes in the admin, superusers included: they move only through services.
NEVER_EDITED = {
    "billing.ledgerentry",
    "billing.webhookevent",
    "billing.webhookprocessing",
    "billing.payment",
    "billing.refund",
    "billing.invoice",
    "billing.slacredit",
    "core.auditevent",
}


def request_for(user: User):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def allowed(model_admin: admin.ModelAdmin, request) -> set[str]:
    checks = {
        V: model_admin.has_view_permission(request),
        A: model_admin.has_add_permission(request),
        C: model_admin.has_change_permission(request),
        D: model_admin.has_delete_permission(request),
    }
    return {name for name, ok in checks.items() if ok}


@pytest.mark.parametrize("group", sorted(EXPECTED))
def test_each_group_holds_exactly_its_model_permissions(group):
    request = request_for(make_staff(group))
    actual = {
        model._meta.label_lower: perms
        for model, model_admin in admin.site._registry.items()
        if (perms := allowed(model_admin, request))
    }
    registered = {m._meta.label_lower for m in admin.site._registry}
    assert actual == {k: v for k, v in EXPECTED[group].items() if k in registered}


@pytest.mark.parametrize("group", sorted(EXPECTED))
def test_each_group_is_offered_exactly_its_actions(group):
    """Only finance refunds, only operations drains nodes, only sales suspends, and so on."""
    request = request_for(make_staff(group))
    offered = {
        model._meta.label_lower: actions
        for model, model_admin in admin.site._registry.items()
        if model_admin.has_view_permission(request)
        and (actions := set(model_admin.get_actions(request)))
    }
    assert offered == ACTIONS[group]


def test_no_group_may_bulk_delete_anything():
    for group in EXPECTED:
        request = request_for(make_staff(group))
        for model, model_admin in admin.site._registry.items():
            assert "delete_selected" not in model_admin.get_actions(request), (group, model)


@pytest.mark.parametrize("group", sorted(EXPECTED))
def test_each_group_opens_only_its_change_lists(group):
    client = verified_client(make_staff(group))
    for model in admin.site._registry:
        label = model._meta.label_lower
        app_label, name = label.split(".")
        status = client.get(f"/admin/{app_label}/{name}/").status_code
        assert status == (200 if label in EXPECTED[group] else 403), label


def test_nobody_edits_money_records_or_events_superusers_included():
    request = request_for(make_staff(superuser=True))
    for model, model_admin in admin.site._registry.items():
        if model._meta.label_lower in NEVER_EDITED:
            assert allowed(model_admin, request) == {V}, model._meta.label_lower


def test_staff_without_a_group_see_nothing():
    client = verified_client(make_staff())
    response = client.get("/admin/")
    assert response.status_code == 200
    assert response.context["app_list"] == []
    assert client.get("/admin/billing/payment/").status_code == 403
