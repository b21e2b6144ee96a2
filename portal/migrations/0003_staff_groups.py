from django.db import migrations


# The staff groups are made by backoffice's 0001 now, after every model they grant exists (the
# audit log moved to core later, so its permissions cannot be made here on a new database).


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0002_idempotency"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("accounts", "0004_back_office"),
        ("capacity", "0005_back_office"),
        ("billing", "0004_back_office"),
    ]

    operations = [migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop)]
