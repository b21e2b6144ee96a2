"""The staff groups Sales, Operations and Finance, holding the permissions in backoffice/roles.py.

On a new database this makes them. A database whose groups an earlier migration (portal 0003)
already made keeps them as they are, including grants an administrator changed since: the audit
log's permissions followed its move to core with their content type (core 0001)."""

from django.db import migrations


def create_groups(apps, schema_editor):
    from backoffice.roles import STAFF_GROUPS, sync_staff_groups

    existing = apps.get_model("auth", "Group").objects.filter(name__in=list(STAFF_GROUPS))
    if existing.count() == len(STAFF_GROUPS):
        return
    sync_staff_groups(apps)


def remove_groups(apps, schema_editor):
    from backoffice.roles import STAFF_GROUPS

    apps.get_model("auth", "Group").objects.filter(name__in=list(STAFF_GROUPS)).delete()


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("core", "0001_initial"),
        ("portal", "0006_moved_to_core"),
        ("accounts", "0007_payment_terms_label"),
        ("capacity", "0007_filter_indexes"),
        ("billing", "0009_payment_duplicate"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
