from django.db import migrations


def create_groups(apps, schema_editor):
    from portal.backoffice.roles import sync_staff_groups

    sync_staff_groups(apps)


def remove_groups(apps, schema_editor):
    from portal.backoffice.roles import STAFF_GROUPS

    apps.get_model("auth", "Group").objects.filter(name__in=list(STAFF_GROUPS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0002_idempotency"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("accounts", "0004_back_office"),
        ("capacity", "0005_back_office"),
        ("billing", "0004_back_office"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
