"""What each staff group may do in the back office: the one table.

A data migration creates the groups from it (and `seed_demo` re-applies it), so a change here
needs a new migration that calls `sync_staff_groups` again. Permissions are
``app_label.codename``; the custom ones are declared on the models (``Meta.permissions``).
"""

from typing import Any

SALES = "Sales"
OPERATIONS = "Operations"
FINANCE = "Finance"

STAFF_GROUPS: dict[str, frozenset[str]] = {
    SALES: frozenset(
        {
            "accounts.view_user",
            "accounts.view_organization",
            "accounts.change_organization",
            "accounts.approve_terms",
            "accounts.suspend_organization",
            "accounts.review_organization",
            "accounts.view_membership",
            "accounts.view_invitation",
            "accounts.view_apikey",
            "capacity.view_gpumodel",
            "capacity.view_region",
            "capacity.view_listprice",
            "capacity.view_durationdiscount",
            "capacity.view_negotiatedrate",
            "capacity.add_negotiatedrate",
            "capacity.change_negotiatedrate",
            "capacity.delete_negotiatedrate",
            "capacity.view_reservation",
            "capacity.create_quote",
            "billing.view_billingaccount",
            "billing.view_payment",
            "billing.view_invoice",
            "billing.view_ledgerentry",
            "core.view_auditevent",
        }
    ),
    OPERATIONS: frozenset(
        {
            "accounts.view_organization",
            "capacity.view_gpumodel",
            "capacity.view_region",
            "capacity.add_region",
            "capacity.change_region",
            "capacity.view_cluster",
            "capacity.add_cluster",
            "capacity.change_cluster",
            "capacity.view_node",
            "capacity.add_node",
            "capacity.change_node",
            "capacity.drain_node",
            "capacity.view_reservation",
            "capacity.operate_reservation",
            "capacity.view_allocation",
            "capacity.view_incident",
            "capacity.change_incident",
            "core.view_auditevent",
        }
    ),
    FINANCE: frozenset(
        {
            "accounts.view_organization",
            "capacity.view_reservation",
            "capacity.view_listprice",
            "billing.view_billingaccount",
            "billing.view_payment",
            "billing.issue_refund",
            "billing.view_refund",
            "billing.view_invoice",
            "billing.view_ledgerentry",
            "billing.view_webhookevent",
            "billing.replay_webhookevent",
            "billing.view_webhookprocessing",
            "billing.view_financeflag",
            "billing.resolve_financeflag",
            "billing.view_modelprice",
            "billing.add_modelprice",
            "billing.change_modelprice",
            "billing.view_usagehour",
            "billing.view_slacredit",
            "core.view_auditevent",
        }
    ),
}


def sync_staff_groups(apps: Any) -> None:
    """Make each group hold exactly its permissions in the table (creating what is missing).

    `apps` is a migration's historical registry or `django.apps.apps`; permissions are created
    first, since Django only creates them after the last migration has run.
    """
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        # A migration's registry has no models modules, and create_permissions skips an app
        # without one; the running registry's must be left as they are (seed_demo calls this
        # in-process, and an app left without one never gets its permissions made again).
        original = getattr(app_config, "models_module", None)
        app_config.models_module = original or True
        try:
            create_permissions(app_config, verbosity=0, apps=apps)
        finally:
            app_config.models_module = original
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, wanted in STAFF_GROUPS.items():
        group, _ = group_model.objects.get_or_create(name=name)
        permissions = []
        for label in sorted(wanted):
            app_label, codename = label.split(".")
            permissions.append(
                permission_model.objects.get(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(permissions)
