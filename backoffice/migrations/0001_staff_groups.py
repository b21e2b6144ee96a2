"""The staff groups Sales, Operations and Finance, holding the permissions in backoffice/roles.py.

Safe on a database whose groups an earlier migration made: each group is set to the table."""

from django.db import migrations


def create_groups(apps, schema_editor):
    from backoffice.roles import sync_staff_groups

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
