"""Finance sees SLA credits (billing.view_slacredit): the groups made again from
backoffice/roles.py, as its docstring asks of every change to the table."""

from django.db import migrations


def sync_groups(apps, schema_editor):
    from backoffice.roles import sync_staff_groups

    sync_staff_groups(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("backoffice", "0001_staff_groups"),
        ("billing", "0013_sla_credits"),
    ]

    operations = [migrations.RunPython(sync_groups, migrations.RunPython.noop)]
